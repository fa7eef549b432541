//! The `auth.v1.AuthService` implementation: each RPC parses its input into domain
//! types, does its work through the store, hasher and signer, and returns `AuthError`,
//! which becomes a `Status` in exactly one place (`error.rs`).

use std::time::Duration;

use strongbox_common::jwt::Verifier;
use strongbox_proto::auth::v1::auth_service_server::AuthService;
use strongbox_proto::auth::v1::{
    GetPublicKeysRequest, GetPublicKeysResponse, LoginRequest, LoginResponse, LogoutAllRequest,
    LogoutAllResponse, LogoutRequest, LogoutResponse, MeRequest, MeResponse, RefreshRequest,
    RefreshResponse, RegisterRequest, RegisterResponse, TokenPair, User,
};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::credentials::{Email, Password};
use crate::error::AuthError;
use crate::passwords::PasswordHasher;
use crate::refresh_tokens::RefreshToken;
use crate::signing::{TokenSigner, unix_now};
use crate::store::{NewRefreshToken, Rotation, Store, UserRecord};

/// Failed-login throttling: at most `max_failures` within `window` per email.
#[derive(Debug, Clone, Copy)]
pub struct LoginThrottle {
    pub max_failures: u32,
    pub window: Duration,
}

pub struct AuthApi {
    pub(crate) store: Store,
    pub(crate) hasher: PasswordHasher,
    pub(crate) signer: TokenSigner,
    pub(crate) verifier: Verifier,
    pub(crate) refresh_ttl: Duration,
    pub(crate) throttle: LoginThrottle,
}

impl AuthApi {
    async fn register(&self, request: RegisterRequest) -> Result<User, AuthError> {
        let email = Email::parse(&request.email)?;
        let password = Password::parse(request.password)?;
        let hash = self.hasher.hash(&password).await?;
        let user = self.store.insert_user(&email, &hash, now()).await?;
        tracing::info!(user_id = %user.id, "registered");
        Ok(user_message(&user))
    }

    async fn login(&self, request: LoginRequest) -> Result<TokenPair, AuthError> {
        let email = Email::parse(&request.email)?;
        let password = Password::parse(request.password)?;
        self.check_throttle(&email).await?;
        let user = self.store.user_by_email(&email).await?;
        let hash = user.as_ref().map(|user| user.password_hash.as_str());
        // Verified even when the user is unknown (against a decoy), so the time taken
        // does not reveal which emails have accounts.
        if !self.hasher.verify(&password, hash).await? {
            self.store.record_failure(&email, now()).await?;
            return Err(AuthError::BadCredentials);
        }
        let Some(user) = user else {
            return Err(AuthError::BadCredentials);
        };
        self.store.clear_failures(&email).await?;
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
        let successor = RefreshToken::generate()?;
        let successor_hash = successor.hash();
        let rotation = self
            .store
            .rotate(&presented.hash(), self.new_refresh(&successor_hash), now())
            .await?;
        let user_id = match rotation {
            Rotation::Rotated { user_id } => Uuid::parse_str(&user_id)
                .map_err(|err| AuthError::Internal(format!("stored user id: {err}")))?,
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

    async fn check_throttle(&self, email: &Email) -> Result<(), AuthError> {
        let now = now();
        let window = i64::try_from(self.throttle.window.as_secs()).unwrap_or(i64::MAX);
        let (failures, oldest) = self.store.failures_since(email, now - window).await?;
        if failures < i64::from(self.throttle.max_failures) {
            return Ok(());
        }
        let retry_at = oldest.unwrap_or(now) + window;
        let retry_after = Duration::from_secs(u64::try_from(retry_at - now).unwrap_or(1));
        tracing::warn!(failures, "login throttled");
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
        let tokens = self.login(request.into_inner()).await?;
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

fn now() -> i64 {
    i64::try_from(unix_now()).unwrap_or(i64::MAX)
}

fn seconds(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}
