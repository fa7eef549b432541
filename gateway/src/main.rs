use std::process::ExitCode;

use gateway::Config;
use strongbox_common::{config, server};

#[tokio::main]
async fn main() -> ExitCode {
    let config: Config = config::load();
    let (listen, command) = (config.listen, config.command);
    let telemetry = config.telemetry.clone();
    let tls_cert = config.tls_cert.clone();
    server::run_binary(
        "gateway",
        listen,
        tls_cert.as_deref(),
        command,
        &telemetry,
        None,
        |listener, shutdown| gateway::run(config, listener, shutdown),
    )
    .await
}
