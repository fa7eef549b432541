//! The command line, the one source of truth for flags, environment variables and
//! defaults (`--help` is generated from it).

use std::fmt;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};

/// Where the gateway listens when nothing says otherwise (the launcher's default).
pub const DEFAULT_SERVER: &str = "http://localhost:8000";

const PASSWORD_SOURCES: &str = "The password is read from STRONGBOX_PASSWORD if it is set, \
    else from the first line of standard input when that is not a terminal, \
    else it is asked for without echo.";

#[derive(Debug, Parser)]
#[command(
    name = "strongbox-cli",
    version,
    about = "Upload, list, download and delete your files on a Strongbox server.",
    after_help = "Exit codes: 0 success, 1 error, 2 usage, 3 not logged in or session \
                  expired, 4 not found, 5 server unavailable (or a download cut short), \
                  6 downloaded bytes that do not match the file's SHA-256, 130 interrupted."
)]
pub struct Args {
    /// The gateway's address [default: the server you logged in to, else http://localhost:8000]
    #[arg(long, env = "STRONGBOX_SERVER", global = true, value_name = "URL", value_parser = ServerUrl::parse)]
    pub server: Option<ServerUrl>,

    /// Machine-readable output: one JSON document on stdout per command, errors as JSON on stderr
    #[arg(long, global = true)]
    pub json: bool,

    /// Where credentials.json and uploads.json are kept [default: the user's config directory, e.g. ~/.config/strongbox]
    #[arg(long, env = "STRONGBOX_CONFIG_DIR", global = true, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an account (then `login`)
    #[command(after_help = PASSWORD_SOURCES)]
    Register {
        /// The account's email address
        email: String,
    },
    /// Start a session; its tokens are kept in <config-dir>/credentials.json (mode 0600)
    #[command(after_help = PASSWORD_SOURCES)]
    Login {
        /// The account's email address
        email: String,
    },
    /// End the session on the server and forget its tokens
    Logout,
    /// Show the account you are logged in as
    Whoami,
    /// Upload files, and folders recursively (symbolic links inside folders are skipped)
    #[command(
        after_help = "Files larger than 8 MiB go through a resumable session: if an upload is \
                      interrupted, running the same command again continues where it stopped, \
                      as long as the file is unchanged."
    )]
    Upload {
        /// Files or folders; a folder's files are named by their path below its parent
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// List your files, newest first
    Ls {
        /// Also show each file's size in bytes, content type and SHA-256
        #[arg(short, long)]
        long: bool,
    },
    /// Download files, checking each one's SHA-256; an interrupted download resumes
    #[command(after_help = "A download in progress is written to a hidden \
                      `.NAME.HASH.part` file next to its destination (with a `.part.json` \
                      saying which file it begins), and renamed into place once the whole \
                      file's SHA-256 matches the server's. If it is interrupted (Ctrl-C, a \
                      lost connection), running the same command again downloads only the \
                      rest, as long as the file on the server is unchanged; otherwise it \
                      starts over and says so. Bytes that do not match the SHA-256 are \
                      deleted (exit code 6).")]
    Download {
        /// The files' keys, as `ls` shows them
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
        /// Where to save: for one key a file path or an existing folder, for several a folder (created if missing) [default: the current folder, under each file's original name]
        #[arg(short, long, value_name = "PATH")]
        output: Option<PathBuf>,
        /// Replace destinations that already exist
        #[arg(short, long)]
        force: bool,
        /// Only continue partial downloads: fail for a file that has none to continue [default: continue one if there is one, else start]
        #[arg(long, conflicts_with = "restart")]
        resume: bool,
        /// Start over, discarding any partial download
        #[arg(long)]
        restart: bool,
    },
    /// Delete a file
    Rm {
        /// The file's key, as `ls` shows it
        key: String,
    },
    /// Show how much you store and have in progress, and the limits that apply
    Usage,
}

/// A server address the client can dial: `http://` or `https://`, with a host, and no
/// trailing slash (so two spellings of one server compare equal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServerUrl(String);

impl ServerUrl {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let trimmed = raw.trim().trim_end_matches('/');
        let Some((scheme, rest)) = trimmed.split_once("://") else {
            return Err(format!(
                "`{raw}` is not a URL; expected e.g. http://localhost:8000"
            ));
        };
        if scheme != "http" && scheme != "https" {
            return Err(format!("`{raw}` must start with http:// or https://"));
        }
        let uri: tonic::codegen::http::Uri = trimmed
            .parse()
            .map_err(|err| format!("`{raw}` is not a valid URL: {err}"))?;
        if uri.host().is_none_or(str::is_empty) || rest.is_empty() {
            return Err(format!("`{raw}` has no host"));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn default_server() -> Self {
        Self(DEFAULT_SERVER.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_https(&self) -> bool {
        self.0.starts_with("https://")
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ServerUrl {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl From<ServerUrl> for String {
    fn from(url: ServerUrl) -> Self {
        url.0
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn server_urls_are_normalised() {
        let url = ServerUrl::parse(" http://127.0.0.1:8000/ ").unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:8000");
        assert_eq!(url, ServerUrl::parse("http://127.0.0.1:8000").unwrap());
        assert!(
            ServerUrl::parse("https://files.example.com")
                .unwrap()
                .is_https()
        );
    }

    #[test]
    fn unusable_server_urls_are_refused() {
        for raw in [
            "localhost:8000",
            "ftp://example.com",
            "http://",
            "http:// bad host",
        ] {
            assert!(ServerUrl::parse(raw).is_err(), "{raw} was accepted");
        }
    }
}
