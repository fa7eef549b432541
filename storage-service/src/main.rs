use std::process::ExitCode;

use storage_service::Config;
use strongbox_common::{config, server};

#[tokio::main]
async fn main() -> ExitCode {
    storage_service::memory::return_large_buffers();
    let config: Config = config::load();
    let (listen, command) = (config.listen, config.command);
    let telemetry = config.telemetry.clone();
    let tls_cert = config.tls_cert.clone();
    let metrics = config.metrics.metrics_listen;
    server::run_binary(
        "storage-service",
        listen,
        tls_cert.as_deref(),
        command,
        &telemetry,
        metrics,
        |listener, shutdown| storage_service::run(config, listener, shutdown),
    )
    .await
}
