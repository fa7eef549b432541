//! The gateway's own `grpc.health.v1`: SERVING only while some replica of each upstream
//! answers its health check, so an orchestrator sees the whole path, not just this
//! process. The same loop keeps each upstream's replicas current: names resolved
//! again, replicas checked, taken out and brought back.

use std::time::{Duration, Instant};

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::upstream::Upstream;

const AUTH_SERVICE: &str = "auth.v1.AuthService";
const STORAGE_SERVICE: &str = "storage.v1.StorageService";

/// Checks every replica of both upstreams every `interval` (resolving their names again
/// every `resolve_interval`) and reports them; runs until aborted.
pub async fn watch_upstreams(
    health: HealthReporter,
    auth: Upstream,
    storage: Upstream,
    interval: Duration,
    resolve_interval: Duration,
) {
    let mut ticks = tokio::time::interval(interval);
    let mut resolved = Instant::now();
    let mut last = None;
    loop {
        ticks.tick().await;
        if resolved.elapsed() >= resolve_interval {
            tokio::join!(auth.discover(), storage.discover());
            resolved = Instant::now();
        }
        let (auth_up, storage_up) = tokio::join!(auth.check(), storage.check());
        let (auth_up, storage_up) = (auth_up > 0, storage_up > 0);
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

fn status(up: bool) -> ServingStatus {
    if up {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}
