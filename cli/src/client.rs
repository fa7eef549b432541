//! The connection to the gateway, and the clients that carry a bearer token.
//!
//! One HTTP/2 channel serves every call of a command. Authorized clients are cheap to
//! build, so after a refresh the session simply builds new ones with the new token
//! instead of sharing a mutable token with an interceptor.

use std::error::Error;
use std::time::Duration;

use strongbox_proto::auth::v1::auth_service_client::AuthServiceClient;
use strongbox_proto::storage::v1::storage_service_client::StorageServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

use crate::args::ServerUrl;
use crate::errors::CliError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Download chunks are small, but a file's info message carries a URL and metadata;
/// this leaves ample room without letting a server make the client buffer gigabytes.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

pub type AuthClient = AuthServiceClient<InterceptedService<Channel, Bearer>>;
pub type StorageClient = StorageServiceClient<InterceptedService<Channel, Bearer>>;

/// Clients that send `authorization: Bearer <access token>` on every call.
#[derive(Clone)]
pub struct Clients {
    pub auth: AuthClient,
    pub storage: StorageClient,
}

impl Clients {
    pub fn new(channel: &Channel, access_token: &str) -> Result<Self, CliError> {
        // A token that is not valid header text can only come from a damaged file.
        let bearer = format!("Bearer {access_token}")
            .parse()
            .map(Bearer)
            .map_err(|_| CliError::SessionExpired)?;
        Ok(Self {
            auth: AuthServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            storage: StorageServiceClient::with_interceptor(channel.clone(), bearer)
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        })
    }
}

/// Adds the `authorization` header to each request.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A client for the public auth calls (Register, Login, Refresh, Logout).
pub fn public_auth(channel: &Channel) -> AuthServiceClient<Channel> {
    AuthServiceClient::new(channel.clone())
}

/// Connects to `server`, so that an unreachable server is reported as such before any
/// work (a password prompt, hashing a large file) is done.
pub async fn connect(server: &ServerUrl) -> Result<Channel, CliError> {
    let unreachable = |detail: String| CliError::Unreachable {
        server: server.to_string(),
        detail,
    };
    let mut endpoint = Endpoint::from_shared(server.to_string())
        .map_err(|err| unreachable(describe(&err)))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30));
    if server.is_https() {
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().with_native_roots())
            .map_err(|err| unreachable(describe(&err)))?;
    }
    endpoint
        .connect()
        .await
        .map_err(|err| unreachable(describe(&err)))
}

/// An error and its causes on one line: tonic's top-level message alone ("transport
/// error") does not say what went wrong.
fn describe(err: &dyn Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(err);
    while let Some(err) = current {
        let text = err.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        current = err.source();
    }
    parts.join(": ")
}
