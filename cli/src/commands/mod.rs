//! One module per command group. Each command takes the [`Context`] the global flags
//! describe, does its work through a [`crate::session::Session`] (or, before logging
//! in, a bare connection), and prints its result through [`crate::output::Output`].

pub mod account;
pub mod batch;
pub mod download;
pub mod files;
pub mod upload;
pub mod usage;

use crate::args::{Args, ServerUrl};
use crate::config_dir::ConfigDir;
use crate::errors::CliError;
use crate::output::Output;

/// What every command needs to know from the global flags.
pub struct Context {
    pub dir: ConfigDir,
    /// The server named by `--server` or `STRONGBOX_SERVER`, if any.
    pub server: Option<ServerUrl>,
    pub out: Output,
}

impl Context {
    pub fn new(args: &Args) -> Result<Self, CliError> {
        Ok(Self {
            dir: ConfigDir::resolve(args.config_dir.clone())?,
            server: args.server.clone(),
            out: Output::new(args.json),
        })
    }
}
