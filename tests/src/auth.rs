//! Starting auth-service and talking to it as a client would.

use auth_service::Config;
use strongbox_proto::auth::v1::auth_service_client::AuthServiceClient;
use strongbox_proto::auth::v1::{LoginRequest, RegisterRequest, TokenPair};
use tonic::Request;
use tonic::transport::Channel;

use crate::database::Database;
use crate::{RunningService, Scratch, until_stopped};

/// bcrypt's minimum cost keeps the suites fast; the cost itself is a config value.
pub const TEST_BCRYPT_ROUNDS: u32 = 4;
pub const PASSWORD: &str = "correct horse battery";

/// auth-service with its own data directory.
pub struct TestAuth {
    pub service: RunningService,
    pub client: AuthServiceClient<Channel>,
    pub config: Config,
}

impl TestAuth {
    /// Starts auth-service with test defaults in `data`, after `adjust` has had its say.
    pub fn start_in(data: &Scratch, adjust: impl FnOnce(&mut Config)) -> Self {
        Self::start_with_workers(data, 2, adjust)
    }

    /// Starts auth-service on `db` (its default SQLite file, or a PostgreSQL database),
    /// with test defaults in `data`, after `adjust` has had its say.
    pub fn start_on(db: &Database, data: &Scratch, adjust: impl FnOnce(&mut Config)) -> Self {
        Self::start_in(data, |config| {
            config.database_url = db.url();
            adjust(config);
        })
    }

    pub fn start_with_workers(
        data: &Scratch,
        workers: usize,
        adjust: impl FnOnce(&mut Config),
    ) -> Self {
        let mut config = Config::with_data_dir(data.path());
        config.bcrypt_rounds = TEST_BCRYPT_ROUNDS;
        adjust(&mut config);
        let run_config = config.clone();
        let service = RunningService::start(workers, move |listener, stopped| {
            auth_service::run(run_config, listener, until_stopped(stopped))
        });
        let client = AuthServiceClient::new(service.channel());
        Self {
            service,
            client,
            config,
        }
    }

    /// A client (cheap clone over the same channel).
    pub fn client(&self) -> AuthServiceClient<Channel> {
        self.client.clone()
    }

    /// Registers `email` with [`PASSWORD`] and logs in.
    pub async fn register_and_login(&self, email: &str) -> TokenPair {
        let mut client = self.client();
        client
            .register(RegisterRequest {
                email: email.into(),
                password: PASSWORD.into(),
            })
            .await
            .expect("register");
        self.login(email).await.expect("login")
    }

    pub async fn login(&self, email: &str) -> Result<TokenPair, tonic::Status> {
        let response = self
            .client()
            .login(LoginRequest {
                email: email.into(),
                password: PASSWORD.into(),
            })
            .await?;
        Ok(response.into_inner().tokens.expect("a token pair"))
    }
}

/// Registers `email` with `password` over `channel` (a service's or the gateway's) and
/// logs in; panics naming the call that failed.
pub async fn new_account(channel: Channel, email: &str, password: &str) -> TokenPair {
    let mut accounts = AuthServiceClient::new(channel);
    accounts
        .register(RegisterRequest {
            email: email.into(),
            password: password.into(),
        })
        .await
        .unwrap_or_else(|status| panic!("Register {email}: {status:?}"));
    accounts
        .login(LoginRequest {
            email: email.into(),
            password: password.into(),
        })
        .await
        .unwrap_or_else(|status| panic!("Login {email}: {status:?}"))
        .into_inner()
        .tokens
        .expect("a token pair")
}

/// Wraps `message` in a request carrying `authorization: Bearer <token>`.
pub fn with_bearer<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ASCII token"),
    );
    request
}

/// Wraps `message` in a request that says it comes from client `address`, as the gateway
/// does (`x-strongbox-client-address`), for tests that call auth-service directly.
pub fn from_address<T>(message: T, address: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        strongbox_common::server::CLIENT_ADDRESS_HEADER,
        address.parse().expect("an ASCII address"),
    );
    request
}
