use std::process::ExitCode;

use storage_service::Config;
use strongbox_common::{config, server};

#[tokio::main]
async fn main() -> ExitCode {
    storage_service::memory::return_large_buffers();
    let config: Config = config::load();
    let (listen, command, log) = (config.listen, config.command, config.log);
    let metrics = config.metrics.metrics_listen;
    server::run_binary(listen, command, log, metrics, |listener, shutdown| {
        storage_service::run(config, listener, shutdown)
    })
    .await
}
