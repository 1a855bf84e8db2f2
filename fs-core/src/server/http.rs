//! The metadata server's plain-HTTP endpoints: `/metrics` (Prometheus, OpenMetrics text),
//! `/healthz` (the process answers) and `/readyz` (the databases are open and gRPC serves).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::metrics::{DelegationLabels, VolumeLabels};
use super::state::MetaServer;

/// The endpoints, on `srv`.
pub fn router(srv: Arc<MetaServer>) -> axum::Router {
    let metrics_srv = srv.clone();
    let ready_srv = srv.clone();
    axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let srv = metrics_srv.clone();
                async move {
                    for v in srv.volumes() {
                        let l = VolumeLabels { volume: v.info().name };
                        srv.metrics.db_bytes.get_or_create(&l).set(v.file_size() as i64);
                        let st = &v.writer.stats;
                        srv.metrics.commits.get_or_create(&l).set(st.commits.load(Ordering::Relaxed) as i64);
                        srv.metrics.syncs.get_or_create(&l).set(st.syncs.load(Ordering::Relaxed) as i64);
                        for (event, n) in v.delegations.counts() {
                            let l = DelegationLabels { volume: l.volume.clone(), event };
                            srv.metrics.delegations.get_or_create(&l).set(n as i64);
                        }
                        srv.metrics
                            .sync_seconds
                            .get_or_create(&l)
                            .set(st.sync_micros.load(Ordering::Relaxed) as f64 / 1e6);
                    }
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        srv.metrics.encode(),
                    )
                }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let ready = ready_srv.ready.load(Ordering::SeqCst);
                async move {
                    if ready {
                        (axum::http::StatusCode::OK, "ready\n")
                    } else {
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "starting\n")
                    }
                }
            }),
        )
}
