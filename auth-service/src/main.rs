use std::process::ExitCode;

use auth_service::Config;
use auth_service::config::AuthCommand;
use auth_service::signing_keys;
use strongbox_common::{config, server};

#[tokio::main]
async fn main() -> ExitCode {
    let config: Config = config::load();
    if config.command == Some(AuthCommand::RotateKey) {
        return rotate_key(&config);
    }
    let (listen, metrics) = (config.listen, config.metrics.metrics_listen);
    let telemetry = config.telemetry.clone();
    let tls_cert = config.tls_cert.clone();
    let command = config.command.and_then(AuthCommand::shared);
    server::run_binary(
        "auth-service",
        listen,
        tls_cert.as_deref(),
        command,
        &telemetry,
        metrics,
        |listener, shutdown| auth_service::run(config, listener, shutdown),
    )
    .await
}

/// `auth-service rotate-key`: one line saying what was done, for the operator.
fn rotate_key(config: &Config) -> ExitCode {
    match signing_keys::rotate(config) {
        Ok(rotation) => {
            println!(
                "new signing key {} is published now and signs from unix time {}; \
                 {} keeps verifying its tokens until they expire ({} expired key(s) deleted)",
                rotation.new_kid, rotation.activates_at, rotation.previous_kid, rotation.pruned
            );
            ExitCode::SUCCESS
        }
        Err(err) => server::exit_with(&err),
    }
}
