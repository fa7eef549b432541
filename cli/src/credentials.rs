//! `credentials.json`: one session's token pair, the server it belongs to, and when the
//! access token expires.
//!
//! Expiry is stored as an absolute time (Unix seconds) computed when the pair arrives,
//! because the server only says "expires in N seconds". The password is never stored.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use strongbox_proto::auth::v1::TokenPair;

use crate::args::ServerUrl;
use crate::config_dir::ConfigDir;
use crate::errors::CliError;

const DAMAGED_ADVICE: &str = " and log in again";

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub server: ServerUrl,
    pub email: String,
    pub access_token: String,
    /// Unix seconds.
    pub access_token_expires_at: u64,
    /// Single use: every Refresh spends it and returns the next one.
    pub refresh_token: String,
    /// Unix seconds.
    pub refresh_token_expires_at: u64,
}

impl Credentials {
    /// The credentials of a pair the server issued `now` (Unix seconds).
    pub fn issued(server: ServerUrl, email: String, tokens: TokenPair, now: u64) -> Self {
        Self {
            server,
            email,
            access_token: tokens.access_token,
            access_token_expires_at: now.saturating_add(seconds(tokens.expires_in)),
            refresh_token: tokens.refresh_token,
            refresh_token_expires_at: now.saturating_add(seconds(tokens.refresh_expires_in)),
        }
    }

    /// The same session with the pair a Refresh returned.
    pub fn rotated(&self, tokens: TokenPair, now: u64) -> Self {
        Self::issued(self.server.clone(), self.email.clone(), tokens, now)
    }

    pub fn access_token_expires_within(&self, margin: Duration, now: u64) -> bool {
        self.access_token_expires_at <= now.saturating_add(margin.as_secs())
    }

    pub async fn load(dir: &ConfigDir) -> Result<Option<Self>, CliError> {
        dir.read_json(&dir.credentials_file(), DAMAGED_ADVICE).await
    }

    pub async fn save(&self, dir: &ConfigDir) -> Result<(), CliError> {
        dir.write_json(&dir.credentials_file(), self).await
    }

    /// Deletes the file; true if there was one.
    pub async fn delete(dir: &ConfigDir) -> Result<bool, CliError> {
        dir.remove(&dir.credentials_file()).await
    }
}

/// Tokens stay out of debug output, and so out of any log or panic message.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("server", &self.server)
            .field("email", &self.email)
            .field("access_token_expires_at", &self.access_token_expires_at)
            .field("refresh_token_expires_at", &self.refresh_token_expires_at)
            .finish_non_exhaustive()
    }
}

/// Now, in Unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

fn seconds(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(access: &str, expires_in: i64) -> TokenPair {
        TokenPair {
            access_token: access.into(),
            refresh_token: format!("refresh-{access}"),
            token_type: "Bearer".into(),
            expires_in,
            refresh_expires_in: 3600,
        }
    }

    #[test]
    fn expiry_is_absolute_and_checked_with_a_margin() {
        let server = ServerUrl::default_server();
        let credentials = Credentials::issued(server, "a@example.com".into(), pair("a", 900), 1000);
        assert_eq!(credentials.access_token_expires_at, 1900);
        let margin = Duration::from_secs(60);
        assert!(!credentials.access_token_expires_within(margin, 1839));
        assert!(credentials.access_token_expires_within(margin, 1840));

        let rotated = credentials.rotated(pair("b", 900), 2000);
        assert_eq!(rotated.refresh_token, "refresh-b");
        assert_eq!(rotated.email, "a@example.com");
        assert_eq!(rotated.access_token_expires_at, 2900);
    }

    #[test]
    fn debug_output_holds_no_token() {
        let server = ServerUrl::default_server();
        let credentials = Credentials::issued(server, "a@example.com".into(), pair("secret", 1), 0);
        assert!(!format!("{credentials:?}").contains("secret"));
    }
}
