use std::process::ExitCode;

use gateway::Config;
use strongbox_common::{config, server, tls};

#[tokio::main]
async fn main() -> ExitCode {
    let config: Config = config::load();
    if config.command == Some(config::Command::Healthcheck)
        && let Some(cert) = &config.tls_cert
    {
        return server::report_health(tls::check_serving_pinned(config.listen, cert).await);
    }
    let (listen, command) = (config.listen, config.command);
    let telemetry = config.telemetry.clone();
    server::run_binary(
        "gateway",
        listen,
        None,
        command,
        &telemetry,
        None,
        |listener, shutdown| gateway::run(config, listener, shutdown),
    )
    .await
}
