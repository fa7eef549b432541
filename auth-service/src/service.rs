//! The `auth.v1.AuthService` implementation: each RPC parses its input into domain
//! types, does its work through the store, hasher and signer, and returns `AuthError`,
//! which becomes a `Status` in exactly one place (`error.rs`).
//!
//! A Login first takes a place in the hashing pool (refused at once when it is full),
//! then claims its attempt against the failed-login limits (refused when they are
//! reached), and only then checks the password: a flood costs neither queueing nor
//! hashing beyond the bounds, and N concurrent guesses check at most the limit.

use std::time::Duration;

use strongbox_common::jwt::Verifier;
use strongbox_common::server::CLIENT_ADDRESS_HEADER;
use strongbox_proto::auth::v1::auth_service_server::AuthService;
use strongbox_proto::auth::v1::{
    GetPublicKeysRequest, GetPublicKeysResponse, LoginRequest, LoginResponse, LogoutAllRequest,
    LogoutAllResponse, LogoutRequest, LogoutResponse, MeRequest, MeResponse, RefreshRequest,
    RefreshResponse, RegisterRequest, RegisterResponse, TokenPair, User,
};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::credentials::{ClientAddress, Email, Password};
use crate::error::AuthError;
use crate::passwords::PasswordHasher;
use crate::refresh_tokens::{RefreshToken, SuccessorKey};
use crate::signing::{TokenSigner, unix_now};
use crate::store::{Claim, FailureLimits, NewRefreshToken, Rotation, Store, UserRecord};

/// Failed-login throttling within `window`: at most `max_failures` per email from one
/// client address, and `max_failures_per_email` from all addresses together. The first
/// stops a guesser at one address without locking the owner out elsewhere (OWASP: a
/// lockout is itself a denial of service); the second bounds a guesser spread over many.
#[derive(Debug, Clone, Copy)]
pub struct LoginThrottle {
    pub max_failures: u32,
    pub max_failures_per_email: u32,
    pub window: Duration,
}

pub struct AuthApi {
    pub(crate) store: Store,
    pub(crate) hasher: PasswordHasher,
    pub(crate) signer: TokenSigner,
    pub(crate) verifier: Verifier,
    pub(crate) refresh_ttl: Duration,
    pub(crate) throttle: LoginThrottle,
    pub(crate) successor_key: SuccessorKey,
    /// How long after its rotation a refresh token may be presented again as a retry.
    pub(crate) refresh_reuse_interval: Duration,
}

impl AuthApi {
    async fn register(&self, request: RegisterRequest) -> Result<User, AuthError> {
        let email = Email::parse(&request.email)?;
        let password = Password::parse(request.password)?;
        let hash = self.hasher.reserve()?.hash(&password).await?;
        let user = self.store.insert_user(&email, &hash, now()).await?;
        tracing::info!(user_id = %user.id, "registered");
        Ok(user_message(&user))
    }

    async fn login(
        &self,
        request: LoginRequest,
        client: ClientAddress,
    ) -> Result<TokenPair, AuthError> {
        let email = Email::parse(&request.email)?;
        let password = Password::parse(request.password)?;
        let slot = self.hasher.reserve()?;
        let attempt = self.claim_attempt(&email, &client).await?;
        let user = self.store.user_by_email(&email).await?;
        let hash = user.as_ref().map(|user| user.password_hash.as_str());
        // Verified even when the user is unknown (against a decoy), so the time taken
        // does not reveal which emails have accounts. A wrong password settles the
        // claimed attempt as a failure. (An attempt that ends some other way — the
        // caller gone, the database down — stays claimed, and counts as a failure until
        // it leaves the window: the safe side.)
        if !slot.verify(&password, hash).await? {
            self.store.settle_failure(attempt).await?;
            return Err(AuthError::BadCredentials);
        }
        let Some(user) = user else {
            return Err(AuthError::BadCredentials);
        };
        self.store.clear_failures(&email, &client).await?;
        let user_id = user.user_id()?;
        let refresh = RefreshToken::generate()?;
        self.store
            .start_session(user_id, self.new_refresh(&refresh.hash()), now())
            .await?;
        tracing::info!(%user_id, "logged in");
        self.token_pair(user_id, refresh)
    }

    async fn refresh(&self, request: RefreshRequest) -> Result<TokenPair, AuthError> {
        let presented = RefreshToken::parse(&request.refresh_token)?;
        // Derived, not random, so that a retry of this call derives the same successor
        // and can be handed it again (see `refresh_tokens`).
        let successor = self.successor_key.successor_of(&presented);
        let successor_hash = successor.hash();
        let rotation = self
            .store
            .rotate(
                &presented.hash(),
                self.new_refresh(&successor_hash),
                now(),
                seconds(self.refresh_reuse_interval),
            )
            .await?;
        let user_id = match rotation {
            Rotation::Rotated { user_id } => parse_user_id(&user_id)?,
            Rotation::Retried { user_id } => {
                tracing::info!(
                    "a refresh token was presented again within the reuse interval; its successor is returned again"
                );
                parse_user_id(&user_id)?
            }
            Rotation::Reused => {
                tracing::warn!("a spent refresh token was presented again; its session is revoked");
                return Err(AuthError::SessionRejected(
                    "this refresh token was already used, so its session has been ended for safety; log in again",
                ));
            }
            Rotation::Revoked => {
                return Err(AuthError::SessionRejected(
                    "this session has been logged out; log in again",
                ));
            }
            Rotation::Expired => {
                return Err(AuthError::SessionRejected(
                    "the refresh token has expired; log in again",
                ));
            }
            Rotation::Unknown => {
                return Err(AuthError::SessionRejected(
                    "the refresh token is not valid; log in again",
                ));
            }
        };
        self.token_pair(user_id, successor)
    }

    async fn logout(&self, request: LogoutRequest) -> Result<(), AuthError> {
        let presented = RefreshToken::parse(&request.refresh_token)?;
        self.store.end_session(&presented.hash(), now()).await
    }

    async fn logout_all(&self, user_id: Uuid) -> Result<(), AuthError> {
        let revoked = self.store.end_all_sessions(user_id, now()).await?;
        tracing::info!(revoked, "logged out everywhere");
        Ok(())
    }

    async fn me(&self, user_id: Uuid) -> Result<User, AuthError> {
        let user = self
            .store
            .user_by_id(user_id)
            .await?
            .ok_or(AuthError::UnknownUser)?;
        Ok(user_message(&user))
    }

    /// Claims a login attempt of `email` from `client` and returns its id, or refuses it
    /// when the attempts in the window reach a limit: until the oldest failure expires,
    /// or for a moment when some of them are still being checked.
    async fn claim_attempt(&self, email: &Email, client: &ClientAddress) -> Result<i64, AuthError> {
        let now = now();
        let window = seconds(self.throttle.window);
        let limits = FailureLimits {
            per_client: self.throttle.max_failures,
            per_email: self.throttle.max_failures_per_email,
            since: now.saturating_sub(window),
        };
        let claim = self
            .store
            .claim_login_attempt(email, client, limits, now)
            .await?;
        let oldest_failure = match claim {
            Claim::Claimed { attempt } => return Ok(attempt),
            Claim::InFlight => {
                tracing::info!(
                    client = client.as_str(),
                    "login refused: attempts in flight"
                );
                return Err(AuthError::AttemptsInFlight);
            }
            Claim::Refused { oldest_failure } => oldest_failure,
        };
        let retry_at = oldest_failure.saturating_add(window);
        let retry_after = Duration::from_secs(u64::try_from(retry_at - now).unwrap_or(1));
        tracing::warn!(client = client.as_str(), "login throttled");
        metrics::counter!(
            "strongbox_rate_limited_total",
            "component" => "auth-service",
            "reason" => "login_throttle",
        )
        .increment(1);
        Err(AuthError::Throttled { retry_after })
    }

    fn new_refresh<'a>(&self, hash: &'a [u8]) -> NewRefreshToken<'a> {
        NewRefreshToken {
            hash,
            expires_at: now() + seconds(self.refresh_ttl),
        }
    }

    fn token_pair(&self, user_id: Uuid, refresh: RefreshToken) -> Result<TokenPair, AuthError> {
        Ok(TokenPair {
            access_token: self.signer.sign(user_id)?,
            refresh_token: refresh.into_string(),
            token_type: "Bearer".to_owned(),
            expires_in: seconds(self.signer.ttl()),
            refresh_expires_in: seconds(self.refresh_ttl),
        })
    }
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let user = self.register(request.into_inner()).await?;
        Ok(Response::new(RegisterResponse { user: Some(user) }))
    }

    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        let client = client_address(&request);
        let tokens = self.login(request.into_inner(), client).await?;
        Ok(Response::new(LoginResponse {
            tokens: Some(tokens),
        }))
    }

    async fn refresh(
        &self,
        request: Request<RefreshRequest>,
    ) -> Result<Response<RefreshResponse>, Status> {
        let tokens = self.refresh(request.into_inner()).await?;
        Ok(Response::new(RefreshResponse {
            tokens: Some(tokens),
        }))
    }

    async fn logout(
        &self,
        request: Request<LogoutRequest>,
    ) -> Result<Response<LogoutResponse>, Status> {
        self.logout(request.into_inner()).await?;
        Ok(Response::new(LogoutResponse {}))
    }

    async fn logout_all(
        &self,
        request: Request<LogoutAllRequest>,
    ) -> Result<Response<LogoutAllResponse>, Status> {
        let user_id = self.verifier.authenticate(&request).await?;
        self.logout_all(user_id).await?;
        Ok(Response::new(LogoutAllResponse {}))
    }

    async fn me(&self, request: Request<MeRequest>) -> Result<Response<MeResponse>, Status> {
        let user_id = self.verifier.authenticate(&request).await?;
        let user = self.me(user_id).await?;
        Ok(Response::new(MeResponse { user: Some(user) }))
    }

    async fn get_public_keys(
        &self,
        _request: Request<GetPublicKeysRequest>,
    ) -> Result<Response<GetPublicKeysResponse>, Status> {
        Ok(Response::new(GetPublicKeysResponse {
            keys: self.signer.public_keys(),
        }))
    }
}

fn user_message(user: &UserRecord) -> User {
    User {
        id: user.id.clone(),
        email: user.email.clone(),
        created_at: Some(prost_types::Timestamp {
            seconds: user.created_at,
            nanos: 0,
        }),
    }
}

/// The client a call comes from: the gateway's header, else the socket's peer.
fn client_address<T>(request: &Request<T>) -> ClientAddress {
    let forwarded = request
        .metadata()
        .get(CLIENT_ADDRESS_HEADER)
        .and_then(|value| value.to_str().ok());
    let peer = request.remote_addr().map(|addr| addr.ip());
    ClientAddress::from_call(forwarded, peer)
}

fn parse_user_id(stored: &str) -> Result<Uuid, AuthError> {
    Uuid::parse_str(stored).map_err(|err| AuthError::Internal(format!("stored user id: {err}")))
}

fn now() -> i64 {
    i64::try_from(unix_now()).unwrap_or(i64::MAX)
}

fn seconds(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}
