use std::process::ExitCode;

use strongbox::Settings;
use strongbox_common::{config, server, shutdown, telemetry};

/// Runs auth-service, storage-service and the gateway together. Every setting of the
/// three services is read from the environment (and `.env`), as their own binaries
/// read it; see their `--help`.
#[derive(clap::Parser)]
#[command(name = "strongbox", version, about)]
struct Args {}

#[tokio::main]
async fn main() -> ExitCode {
    let _: Args = config::load();
    let settings = Settings::from_env();
    let telemetry = match telemetry::init(&settings.gateway.telemetry, "strongbox") {
        Ok(telemetry) => telemetry,
        Err(err) => return server::exit_with(&err),
    };
    let ready = |url: &str| {
        tracing::info!("Strongbox is running: open {url}/");
        println!("Strongbox is running: open {url}/  (Ctrl-C stops it)");
    };
    let exit = match strongbox::run(settings, shutdown::signal(), ready).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => server::exit_with(&err),
    };
    telemetry.shutdown().await;
    exit
}
