//! The gateway's own `grpc.health.v1`: SERVING only while the upstreams answer their
//! health checks, so an orchestrator sees the whole path, not just this process.

use std::time::Duration;

use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::server::HealthReporter;

use crate::upstream::Upstream;

const AUTH_SERVICE: &str = "auth.v1.AuthService";
const STORAGE_SERVICE: &str = "storage.v1.StorageService";
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Checks both upstreams every `interval` and reports them; runs until aborted.
pub async fn watch_upstreams(
    health: HealthReporter,
    auth: Upstream,
    storage: Upstream,
    interval: Duration,
) {
    let mut ticks = tokio::time::interval(interval);
    let mut last = None;
    loop {
        ticks.tick().await;
        let (auth_up, storage_up) = tokio::join!(is_serving(&auth), is_serving(&storage));
        for (upstream, up) in [(auth.name, auth_up), (storage.name, storage_up)] {
            metrics::gauge!("strongbox_upstream_up", "upstream" => upstream)
                .set(f64::from(u8::from(up)));
        }
        health
            .set_service_status(AUTH_SERVICE, status(auth_up))
            .await;
        health
            .set_service_status(STORAGE_SERVICE, status(storage_up))
            .await;
        health
            .set_service_status("", status(auth_up && storage_up))
            .await;
        if last != Some((auth_up, storage_up)) {
            tracing::info!(auth_up, storage_up, "upstream health changed");
            last = Some((auth_up, storage_up));
        }
    }
}

async fn is_serving(upstream: &Upstream) -> bool {
    let mut client = HealthClient::new(upstream.control.clone());
    let check = client.check(HealthCheckRequest {
        service: String::new(),
    });
    matches!(
        tokio::time::timeout(CHECK_TIMEOUT, check).await,
        Ok(Ok(response)) if response.get_ref().status() == tonic_health::pb::health_check_response::ServingStatus::Serving
    )
}

fn status(up: bool) -> ServingStatus {
    if up {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}
