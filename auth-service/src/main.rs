use std::process::ExitCode;

use auth_service::Config;
use strongbox_common::{config, server};

#[tokio::main]
async fn main() -> ExitCode {
    let config: Config = config::load();
    let (listen, command) = (config.listen, config.command);
    server::run_binary(listen, command, |listener, shutdown| {
        auth_service::run(config, listener, shutdown)
    })
    .await
}
