use std::process::ExitCode;

use gateway::Config;
use strongbox_common::config::Command;
use strongbox_common::{config, server, shutdown, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let config: Config = config::load();
    if config.command == Some(Command::Healthcheck) {
        return server::healthcheck(config.listen).await;
    }
    telemetry::init();
    let listener = match server::bind(config.listen).await {
        Ok(listener) => listener,
        Err(err) => return server::exit_with(&err),
    };
    match gateway::run(config, listener, shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => server::exit_with(&err),
    }
}
