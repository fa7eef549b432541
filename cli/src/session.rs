//! A logged-in session: the stored credentials, kept fresh.
//!
//! Access tokens live 15 minutes, so a long upload outlives several. Before each call the
//! session refreshes a token that expires within a minute, and if the server still says
//! UNAUTHENTICATED (a token revoked, a clock that disagrees) it refreshes once and retries
//! the call once. Refresh tokens are single-use and a replayed one ends the whole session
//! on the server, so every rotated pair is saved at once, and a refresh happens under the
//! state lock after re-reading the file: another `strongbox-cli` may have rotated the pair
//! first, and then its pair is the live one.

use std::future::Future;
use std::time::Duration;

use strongbox_proto::auth::v1::RefreshRequest;
use tonic::Code;
use tonic::transport::Channel;

use crate::args::ServerUrl;
use crate::client::{self, Clients};
use crate::commands::Context;
use crate::config_dir::ConfigDir;
use crate::credentials::{Credentials, unix_now};
use crate::errors::CliError;

/// Refresh an access token this close to its expiry rather than risk it expiring in flight.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(60);

pub struct Session {
    dir: ConfigDir,
    channel: Channel,
    credentials: Credentials,
}

impl Session {
    /// The stored session, connected to its server. `--server`, when given, must be the
    /// server the session belongs to.
    pub async fn resume(context: &Context) -> Result<Self, CliError> {
        let credentials = Credentials::load(&context.dir)
            .await?
            .ok_or(CliError::NotLoggedIn)?;
        if let Some(requested) = &context.server
            && *requested != credentials.server
        {
            return Err(CliError::LoggedInElsewhere {
                logged_in: credentials.server.to_string(),
                requested: requested.to_string(),
            });
        }
        let channel = client::connect(&credentials.server).await?;
        Ok(Self {
            dir: context.dir.clone(),
            channel,
            credentials,
        })
    }

    pub fn server(&self) -> &ServerUrl {
        &self.credentials.server
    }

    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Runs `call` with authorized clients, refreshing the token pair before it expires,
    /// and once more (then retrying `call` once) if the server refuses the access token.
    /// `call` may therefore run twice: it must start its work from scratch each time.
    pub async fn call<T, F, Fut>(&mut self, mut call: F) -> Result<T, CliError>
    where
        F: FnMut(Clients) -> Fut,
        Fut: Future<Output = Result<T, CliError>>,
    {
        if self
            .credentials
            .access_token_expires_within(REFRESH_MARGIN, unix_now())
        {
            self.refresh().await?;
        }
        match call(self.clients()?).await {
            Err(err) if err.code() == Some(Code::Unauthenticated) => {
                self.refresh().await?;
                call(self.clients()?).await
            }
            outcome => outcome,
        }
    }

    fn clients(&self) -> Result<Clients, CliError> {
        Clients::new(&self.channel, &self.credentials.access_token)
    }

    /// Exchanges the refresh token for a new pair and stores it.
    async fn refresh(&mut self) -> Result<(), CliError> {
        let _lock = self.dir.lock().await?;
        if self.adopt_pair_rotated_elsewhere().await? {
            return Ok(());
        }
        let request = RefreshRequest {
            refresh_token: self.credentials.refresh_token.clone(),
        };
        let tokens = match client::public_auth(&self.channel).refresh(request).await {
            Ok(response) => response.into_inner().tokens.ok_or_else(|| {
                CliError::Internal("the server answered Refresh without tokens".into())
            })?,
            // The refresh token expired, was revoked, or was already spent: only a new
            // login can start a session again.
            Err(status)
                if matches!(
                    status.code(),
                    Code::Unauthenticated | Code::InvalidArgument | Code::PermissionDenied
                ) =>
            {
                return Err(CliError::SessionExpired);
            }
            Err(status) => return Err(status.into()),
        };
        self.credentials = self.credentials.rotated(tokens, unix_now());
        self.credentials.save(&self.dir).await
    }

    /// Takes over a pair another process stored since this one loaded its own (this
    /// one's refresh token is then spent). True if that pair needs no refresh.
    async fn adopt_pair_rotated_elsewhere(&mut self) -> Result<bool, CliError> {
        let Some(on_disk) = Credentials::load(&self.dir).await? else {
            return Ok(false);
        };
        if on_disk.server != self.credentials.server
            || on_disk.refresh_token == self.credentials.refresh_token
        {
            return Ok(false);
        }
        self.credentials = on_disk;
        Ok(!self
            .credentials
            .access_token_expires_within(REFRESH_MARGIN, unix_now()))
    }
}
