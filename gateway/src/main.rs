use std::process::ExitCode;

use gateway::Config;
use strongbox_common::{config, server};

#[tokio::main]
async fn main() -> ExitCode {
    let config: Config = config::load();
    let (listen, command, log) = (config.listen, config.command, config.log);
    server::run_binary(listen, command, log, None, |listener, shutdown| {
        gateway::run(config, listener, shutdown)
    })
    .await
}
