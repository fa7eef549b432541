//! Access tokens: the claims auth-service signs and the one verifier every service uses.
//!
//! Tokens are JWTs signed with Ed25519 (`EdDSA`) and carry a `kid`; verifiers hold the
//! public keys by kid (auth-service its own; the others fetched from its
//! `GetPublicKeys`, refetched when an unknown kid shows up). A shared HS256 secret
//! (`JWT_SECRET`) is the compatibility mode. Either way the verifier pins exactly one
//! algorithm, so `none`, HS256-signed-with-the-public-key and other confusions fail
//! before any signature is checked, and `exp`, `iss` and `aud` are mandatory.
//!
//! A token naming an unknown kid costs its verifier at most one `GetPublicKeys` per
//! [`MIN_REFETCH_INTERVAL`] (one per [`RETRY_AFTER_FAILURE`] while auth-service cannot
//! answer), each bounded by [`FETCH_TIMEOUT`]: a flood of forged kids becomes neither a
//! flood of fetches nor calls that hang. This is also why auth-service publishes a
//! rotated key well before signing with it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use strongbox_proto::auth::v1::GetPublicKeysRequest;
use strongbox_proto::auth::v1::auth_service_client::AuthServiceClient;
use tokio::sync::{Mutex, RwLock};
use tonic::Status;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use uuid::Uuid;

/// The `iss` of every access token.
pub const ISSUER: &str = "strongbox-auth";
/// The `aud` of every access token.
pub const AUDIENCE: &str = "strongbox";
/// The JWS name of Ed25519 signatures, as published by `GetPublicKeys`.
pub const EDDSA: &str = "EdDSA";
/// Clock skew tolerated on `exp` and `nbf`. The services share a host or a compose
/// network, so a few seconds is plenty. A token verifies up to this long after its `exp`.
pub const LEEWAY_SECONDS: u64 = 5;
/// An unknown kid triggers at most one key refetch per this interval, so a flood of
/// forged kids cannot turn into a flood of calls to auth-service.
pub const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(5);
/// After a fetch that failed, the next may come sooner: auth-service may just have
/// started, and every token fails until the keys arrive.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// The longest one key fetch may take, connecting included; calls waiting on it fail
/// with UNAVAILABLE after that rather than hang.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// The claims of a Strongbox access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id (a UUID).
    pub sub: String,
    pub exp: u64,
    pub iat: u64,
    pub nbf: u64,
    /// Unique token id.
    pub jti: String,
    pub iss: String,
    pub aud: String,
}

/// A caller whose access token verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub user_id: Uuid,
}

/// Why a bearer token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("missing `authorization: Bearer <access token>` metadata; log in to get a token")]
    Missing,
    #[error("the authorization metadata must be `Bearer <access token>`")]
    NotBearer,
    #[error("the access token has expired; refresh it or log in again")]
    Expired,
    #[error("the access token is not valid yet; check the clock")]
    NotYetValid,
    #[error("the access token was signed with a key this service does not know; log in again")]
    UnknownKey,
    #[error("the access token is invalid ({0}); log in again")]
    Invalid(&'static str),
    #[error("cannot fetch token verification keys from auth-service; try again shortly")]
    KeysUnavailable(#[source] Status),
}

impl From<TokenError> for Status {
    fn from(err: TokenError) -> Self {
        match err {
            TokenError::KeysUnavailable(ref source) => {
                tracing::warn!(%source, "verification keys unavailable");
                Status::unavailable(err.to_string())
            }
            other => Status::unauthenticated(other.to_string()),
        }
    }
}

/// Returns the token from the `authorization: Bearer <token>` metadata of a gRPC call.
pub fn bearer_token(metadata: &MetadataMap) -> Result<&str, TokenError> {
    let value = metadata.get("authorization").ok_or(TokenError::Missing)?;
    parse_bearer(value.to_str().map_err(|_| TokenError::NotBearer)?)
}

/// Returns the token from an `authorization: Bearer <token>` HTTP header.
pub fn bearer_token_from_headers(headers: &http::HeaderMap) -> Result<&str, TokenError> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or(TokenError::Missing)?;
    parse_bearer(value.to_str().map_err(|_| TokenError::NotBearer)?)
}

fn parse_bearer(value: &str) -> Result<&str, TokenError> {
    let (scheme, token) = value.split_once(' ').ok_or(TokenError::NotBearer)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(TokenError::NotBearer);
    }
    Ok(token)
}

/// The key material a verifier checks signatures with.
#[allow(clippy::large_enum_variant, reason = "one per process, behind an Arc")]
enum KeyRing {
    /// A shared HS256 secret.
    Shared(DecodingKey),
    /// Ed25519 public keys by kid, optionally kept fresh from auth-service.
    Published {
        keys: RwLock<HashMap<String, DecodingKey>>,
        source: Option<KeySource>,
    },
}

struct KeySource {
    channels: Box<dyn KeyChannel>,
    last_fetch: Mutex<Option<LastFetch>>,
}

/// When keys were last asked for, and whether they came.
struct LastFetch {
    at: Instant,
    failure: Option<Status>,
}

impl LastFetch {
    /// Whether another fetch is allowed yet.
    fn is_recent(&self) -> bool {
        let interval = match self.failure {
            None => MIN_REFETCH_INTERVAL,
            Some(_) => RETRY_AFTER_FAILURE,
        };
        self.at.elapsed() < interval
    }
}

/// Where a verifier fetches auth-service's keys: one channel, a list of replicas, or (in
/// the gateway) the replicas its health checks find answering.
pub trait KeyChannel: Send + Sync + 'static {
    /// The channels to try for the next fetch, in order: the first that answers gives
    /// the keys. An error says why there is none (no replica answering).
    fn channels(&self) -> Result<Vec<Channel>, Status>;

    /// The channel at `index` of [`KeyChannel::channels`] answered: a list may start
    /// from it next time, so a dead replica costs one failed connection, not one per
    /// fetch.
    fn answered(&self, _index: usize) {}
}

impl KeyChannel for Channel {
    fn channels(&self) -> Result<Vec<Channel>, Status> {
        Ok(vec![self.clone()])
    }
}

/// auth-service replicas named one by one (a comma-separated `AUTH_SERVICE_URL`): each
/// fetch starts with the replica that answered the last one and goes on down the list.
pub struct KeyChannels {
    channels: Vec<Channel>,
    preferred: AtomicUsize,
}

impl KeyChannels {
    pub fn new(channels: Vec<Channel>) -> Self {
        Self {
            channels,
            preferred: Default::default(),
        }
    }
}

impl KeyChannel for KeyChannels {
    fn channels(&self) -> Result<Vec<Channel>, Status> {
        let start = self.preferred.load(Ordering::Relaxed);
        let mut ordered = self.channels.clone();
        ordered.rotate_left(start % self.channels.len().max(1));
        Ok(ordered)
    }

    fn answered(&self, index: usize) {
        let count = self.channels.len().max(1);
        // `index` is into the rotated order `channels` returned.
        let _ = self
            .preferred
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |start| {
                Some((start + index) % count)
            });
    }
}

/// Verifies access tokens. Cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    ring: Arc<KeyRing>,
}

impl Verifier {
    /// Verifies HS256 tokens signed with `secret` (the `JWT_SECRET` mode).
    pub fn shared_secret(secret: &[u8]) -> Self {
        Self::from_ring(KeyRing::Shared(DecodingKey::from_secret(secret)))
    }

    /// Verifies EdDSA tokens with a fixed set of raw 32-byte Ed25519 public keys by kid.
    pub fn ed25519(keys: impl IntoIterator<Item = (String, [u8; 32])>) -> Self {
        let keys = keys
            .into_iter()
            .map(|(kid, raw)| (kid, ed25519_key(&raw)))
            .collect();
        Self::from_ring(KeyRing::Published {
            keys: RwLock::new(keys),
            source: None,
        })
    }

    /// Verifies EdDSA tokens with the keys auth-service publishes over `channels`.
    /// Keys are fetched on first use and again whenever a token names an unknown kid.
    pub fn from_auth_service(channels: impl KeyChannel) -> Self {
        Self::from_ring(KeyRing::Published {
            keys: RwLock::new(HashMap::new()),
            source: Some(KeySource {
                channels: Box::new(channels),
                last_fetch: Mutex::new(None),
            }),
        })
    }

    fn from_ring(ring: KeyRing) -> Self {
        Self {
            ring: Arc::new(ring),
        }
    }

    /// Replaces the Ed25519 keys of a verifier made by [`Verifier::ed25519`] (auth-service
    /// keeps its own verifier in step with its key set this way). No effect on a
    /// shared-secret verifier.
    pub async fn replace_ed25519_keys(&self, keys: impl IntoIterator<Item = (String, [u8; 32])>) {
        if let KeyRing::Published { keys: current, .. } = &*self.ring {
            *current.write().await = keys
                .into_iter()
                .map(|(kid, raw)| (kid, ed25519_key(&raw)))
                .collect();
        }
    }

    /// Verifies the bearer token of a gRPC call and returns the caller's user id,
    /// recording it on the current span.
    pub async fn authenticate<T>(&self, request: &tonic::Request<T>) -> Result<Uuid, Status> {
        Ok(self
            .authenticate_token(bearer_token(request.metadata()))
            .await?
            .user_id)
    }

    /// Like [`Verifier::authenticate`], for a request seen as plain HTTP (the gateway).
    pub async fn authenticate_headers(&self, headers: &http::HeaderMap) -> Result<Caller, Status> {
        self.authenticate_token(bearer_token_from_headers(headers))
            .await
    }

    async fn authenticate_token(&self, token: Result<&str, TokenError>) -> Result<Caller, Status> {
        let caller = self.verify(token?).await?;
        tracing::Span::current().record("user_id", tracing::field::display(caller.user_id));
        Ok(caller)
    }

    /// Verifies one access token.
    pub async fn verify(&self, token: &str) -> Result<Caller, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid("malformed"))?;
        let claims = match &*self.ring {
            KeyRing::Shared(key) => decode(token, key, Algorithm::HS256)?,
            KeyRing::Published { keys, source } => {
                if header.alg != Algorithm::EdDSA {
                    return Err(TokenError::Invalid("wrong algorithm"));
                }
                let kid = header.kid.ok_or(TokenError::Invalid("no key id"))?;
                // Bound first: a guard in the `match` scrutinee would live through the
                // arms and deadlock the refetch's write lock.
                let known = keys.read().await.get(&kid).cloned();
                let key = match known {
                    Some(key) => key,
                    None => {
                        let source = source.as_ref().ok_or(TokenError::UnknownKey)?;
                        source.refetch(keys).await?;
                        keys.read()
                            .await
                            .get(&kid)
                            .cloned()
                            .ok_or(TokenError::UnknownKey)?
                    }
                };
                decode(token, &key, Algorithm::EdDSA)?
            }
        };
        let user_id =
            Uuid::parse_str(&claims.sub).map_err(|_| TokenError::Invalid("bad subject"))?;
        Ok(Caller { user_id })
    }
}

impl KeySource {
    /// Replaces the key set with auth-service's current one, unless another caller
    /// just did (or just tried: then its failure is the answer). Callers that arrive
    /// during a fetch wait for it, at most [`FETCH_TIMEOUT`].
    async fn refetch(&self, keys: &RwLock<HashMap<String, DecodingKey>>) -> Result<(), TokenError> {
        let mut last_fetch = self.last_fetch.lock().await;
        if let Some(last) = last_fetch.as_ref().filter(|last| last.is_recent()) {
            return match &last.failure {
                None => Ok(()),
                Some(status) => Err(TokenError::KeysUnavailable(status.clone())),
            };
        }
        let fetched = self.fetch().await;
        *last_fetch = Some(LastFetch {
            at: Instant::now(),
            failure: fetched.as_ref().err().cloned(),
        });
        let fresh = fetched.map_err(TokenError::KeysUnavailable)?;
        tracing::info!(keys = fresh.len(), "fetched token verification keys");
        *keys.write().await = fresh;
        Ok(())
    }

    /// `GetPublicKeys` from the first channel that answers, all of it bounded by
    /// [`FETCH_TIMEOUT`] and each channel by its share, so one replica that never
    /// answers leaves time for the next.
    async fn fetch(&self) -> Result<HashMap<String, DecodingKey>, Status> {
        let channels = self.channels.channels()?;
        let share = FETCH_TIMEOUT / u32::try_from(channels.len().max(1)).unwrap_or(u32::MAX);
        let mut failure = Status::unavailable("no auth-service to fetch keys from");
        for (index, channel) in channels.into_iter().enumerate() {
            match fetch_from(channel, share).await {
                Ok(keys) => {
                    self.channels.answered(index);
                    return Ok(keys);
                }
                Err(status) => {
                    tracing::warn!(%status, "an auth-service did not give its keys");
                    failure = status;
                }
            }
        }
        Err(failure)
    }
}

/// One `GetPublicKeys` over `channel`, bounded by `timeout`.
async fn fetch_from(
    channel: Channel,
    timeout: Duration,
) -> Result<HashMap<String, DecodingKey>, Status> {
    let mut request = tonic::Request::new(GetPublicKeysRequest {});
    request.set_timeout(timeout);
    let mut client = AuthServiceClient::new(channel);
    let response = tokio::time::timeout(timeout, client.get_public_keys(request))
        .await
        .map_err(|_| {
            Status::deadline_exceeded(format!("GetPublicKeys did not answer within {timeout:?}"))
        })??
        .into_inner();
    Ok(response
        .keys
        .into_iter()
        .filter(|key| key.alg == EDDSA)
        .filter_map(|key| {
            let raw: [u8; 32] = key.public_key.as_ref().try_into().ok()?;
            Some((key.kid, ed25519_key(&raw)))
        })
        .collect())
}

fn ed25519_key(raw: &[u8; 32]) -> DecodingKey {
    // jsonwebtoken's "Ed DER" decoding key is the raw 32-byte public key (as in a JWK's `x`).
    DecodingKey::from_ed_der(raw)
}

fn decode(token: &str, key: &DecodingKey, algorithm: Algorithm) -> Result<Claims, TokenError> {
    let mut validation = Validation::new(algorithm);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[AUDIENCE]);
    validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
    validation.validate_nbf = true;
    validation.leeway = LEEWAY_SECONDS;
    jsonwebtoken::decode::<Claims>(token, key, &validation)
        .map(|data| data.claims)
        .map_err(|err| {
            use jsonwebtoken::errors::ErrorKind;
            match err.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidSignature => TokenError::Invalid("bad signature"),
                ErrorKind::InvalidAlgorithm => TokenError::Invalid("wrong algorithm"),
                ErrorKind::InvalidIssuer => TokenError::Invalid("wrong issuer"),
                ErrorKind::InvalidAudience => TokenError::Invalid("wrong audience"),
                ErrorKind::MissingRequiredClaim(_) => TokenError::Invalid("missing claim"),
                _ => TokenError::Invalid("malformed"),
            }
        })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use jsonwebtoken::{EncodingKey, Header};
    use strongbox_proto::auth::v1::auth_service_server::{AuthService, AuthServiceServer};
    use strongbox_proto::auth::v1::*;
    use tonic::{Request, Response};

    use super::*;

    /// An auth-service that only counts `GetPublicKeys` calls and publishes no keys.
    #[derive(Default)]
    struct CountingKeys {
        calls: Arc<AtomicUsize>,
    }

    type Answer<T> = Result<Response<T>, Status>;

    #[tonic::async_trait]
    impl AuthService for CountingKeys {
        async fn register(&self, _: Request<RegisterRequest>) -> Answer<RegisterResponse> {
            Err(Status::unimplemented("test"))
        }
        async fn login(&self, _: Request<LoginRequest>) -> Answer<LoginResponse> {
            Err(Status::unimplemented("test"))
        }
        async fn refresh(&self, _: Request<RefreshRequest>) -> Answer<RefreshResponse> {
            Err(Status::unimplemented("test"))
        }
        async fn logout(&self, _: Request<LogoutRequest>) -> Answer<LogoutResponse> {
            Err(Status::unimplemented("test"))
        }
        async fn logout_all(&self, _: Request<LogoutAllRequest>) -> Answer<LogoutAllResponse> {
            Err(Status::unimplemented("test"))
        }
        async fn me(&self, _: Request<MeRequest>) -> Answer<MeResponse> {
            Err(Status::unimplemented("test"))
        }
        async fn get_public_keys(
            &self,
            _: Request<GetPublicKeysRequest>,
        ) -> Answer<GetPublicKeysResponse> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(Response::new(GetPublicKeysResponse { keys: Vec::new() }))
        }
    }

    /// A [`CountingKeys`] server on a loopback port: a channel to it, its count of
    /// `GetPublicKeys` calls, and its task.
    async fn counting_keys() -> (Channel, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let channel = lazy_channel(&listener).await;
        let service = CountingKeys::default();
        let calls = service.calls.clone();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(AuthServiceServer::new(service))
                .serve_with_incoming(incoming)
                .await
                .unwrap();
        });
        (channel, calls, server)
    }

    async fn lazy_channel(listener: &tokio::net::TcpListener) -> Channel {
        let addr = listener.local_addr().unwrap();
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy()
    }

    /// A well-formed EdDSA token naming `kid`, signed by a key nobody publishes.
    fn forged_token(kid: &str) -> String {
        // PKCS#8 v1 DER of an Ed25519 private key: a fixed prefix, then the 32-byte seed.
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend([7u8; 32]);
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.to_owned());
        let now = 2_000_000_000;
        let claims = Claims {
            sub: Uuid::new_v4().to_string(),
            exp: now,
            iat: now,
            nbf: 0,
            jti: Uuid::new_v4().to_string(),
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
        };
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(&der)).unwrap()
    }

    #[tokio::test]
    async fn a_burst_of_forged_kids_costs_one_key_fetch_per_interval() {
        let (channel, calls, server) = counting_keys().await;

        let verifier = Verifier::from_auth_service(channel);
        let burst = (0..200).map(|n| {
            let verifier = verifier.clone();
            let token = forged_token(&format!("forged-{n}"));
            tokio::spawn(async move { verifier.verify(&token).await })
        });
        for outcome in futures_join(burst).await {
            assert!(
                matches!(outcome, Err(TokenError::UnknownKey)),
                "{outcome:?}"
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        server.abort();
    }

    #[tokio::test]
    async fn a_key_fetch_goes_on_to_the_next_replica_when_one_is_gone() {
        // A replica that is gone: its port refuses connections.
        let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone_channel = lazy_channel(&gone).await;
        drop(gone);
        let (channel, calls, server) = counting_keys().await;

        let replicas = KeyChannels::new(vec![gone_channel, channel]);
        let verifier = Verifier::from_auth_service(replicas);
        // The keys came (from the second replica): the kid is unknown, not unreachable.
        let outcome = verifier.verify(&forged_token("rotated")).await;
        assert!(
            matches!(outcome, Err(TokenError::UnknownKey)),
            "{outcome:?}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        server.abort();
    }

    #[tokio::test]
    async fn a_list_of_replicas_starts_with_the_one_that_answered_last() {
        let replicas = KeyChannels::new(Vec::new());
        assert!(replicas.channels().unwrap().is_empty());
        let replicas = KeyChannels {
            channels: vec![unused_channel(1), unused_channel(2), unused_channel(3)],
            preferred: AtomicUsize::new(0),
        };
        replicas.answered(1);
        assert_eq!(replicas.preferred.load(Ordering::Relaxed), 1);
        // Index 2 of the order that started at 1 is the first replica again.
        replicas.answered(2);
        assert_eq!(replicas.preferred.load(Ordering::Relaxed), 0);
    }

    fn unused_channel(port: u16) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect_lazy()
    }

    #[tokio::test]
    async fn a_key_fetch_that_never_answers_fails_within_the_timeout() {
        // Accepts connections and never says a word: not even the HTTP/2 handshake.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let channel = lazy_channel(&listener).await;
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });

        let verifier = Verifier::from_auth_service(channel);
        let started = Instant::now();
        let first = verifier.verify(&forged_token("a")).await;
        assert!(
            matches!(first, Err(TokenError::KeysUnavailable(_))),
            "{first:?}"
        );
        assert!(started.elapsed() < FETCH_TIMEOUT + Duration::from_secs(1));
        // Within the retry interval the failure is the answer, at once.
        let again = Instant::now();
        let second = verifier.verify(&forged_token("b")).await;
        assert!(
            matches!(second, Err(TokenError::KeysUnavailable(_))),
            "{second:?}"
        );
        assert!(again.elapsed() < Duration::from_millis(100));
        silent.abort();
    }

    async fn futures_join<T: Send + 'static>(
        tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>,
    ) -> Vec<T> {
        let mut results = Vec::new();
        for task in tasks.collect::<Vec<_>>() {
            results.push(task.await.unwrap());
        }
        results
    }
}
