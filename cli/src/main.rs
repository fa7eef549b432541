//! The `strongbox-cli` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    // clap exits with code 2 on a usage error, and 0 after `--help` or `--version`.
    let args = strongbox_cli::Args::parse();
    strongbox_cli::run(args).await
}
