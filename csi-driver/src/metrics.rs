//! The node plugin's plain-HTTP endpoints: `/metrics` (Prometheus, OpenMetrics text: per
//! published volume, its sessions and targets, requests, errors, bytes, cache counters) and
//! `/healthz`.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::node::NodeService;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VolumeLabels {
    volume_id: String,
}

/// The metrics of the sessions live now.
async fn encode(node: &NodeService) -> String {
    let mut registry = Registry::with_prefix("stratusfs_csi");
    let family = |registry: &mut Registry, name: &str, help: &str| {
        let f = Family::<VolumeLabels, Gauge>::default();
        registry.register(name, help, f.clone());
        f
    };
    let sessions = family(&mut registry, "sessions", "FUSE sessions of the volume on this node");
    let targets = family(&mut registry, "published_targets", "Pod targets the volume is bind-mounted into");
    let l1_hits = family(&mut registry, "l1_hits", "Reads answered from the memory cache (since the session started)");
    let l1_fetches = family(&mut registry, "l1_fetches", "Chunks fetched from the block store or the disk cache");
    let l2_hits = family(&mut registry, "l2_hits", "Blocks read from the disk cache");
    let l2_misses = family(&mut registry, "l2_misses", "Blocks the disk cache did not have");
    let requests = family(&mut registry, "requests", "Requests the kernel sent to the volume's sessions");
    let errors = family(&mut registry, "errors", "Requests answered with an error (but ENOENT and ENODATA)");
    let read = family(&mut registry, "read_bytes", "Bytes read through the volume's sessions");
    let written = family(&mut registry, "written_bytes", "Bytes written through the volume's sessions");
    let resent = family(
        &mut registry,
        "resent_requests",
        "Requests a crashed node plugin had read and the kernel queued again for this one",
    );
    let lost = family(
        &mut registry,
        "lost_writes_reported",
        "Fsyncs and closes answered EIO: the writes they covered died with a crashed node plugin",
    );
    for (volume_id, n, st) in node.published().await {
        let l = VolumeLabels { volume_id };
        sessions.get_or_create(&l).inc();
        targets.get_or_create(&l).inc_by(n as i64);
        l1_hits.get_or_create(&l).inc_by(st.l1_hits as i64);
        l1_fetches.get_or_create(&l).inc_by(st.l1_fetches as i64);
        l2_hits.get_or_create(&l).inc_by(st.l2_hits as i64);
        l2_misses.get_or_create(&l).inc_by(st.l2_misses as i64);
        requests.get_or_create(&l).inc_by(st.requests as i64);
        errors.get_or_create(&l).inc_by(st.errors as i64);
        read.get_or_create(&l).inc_by(st.bytes_read as i64);
        written.get_or_create(&l).inc_by(st.bytes_written as i64);
        resent.get_or_create(&l).inc_by(st.resent_requests as i64);
        lost.get_or_create(&l).inc_by(st.lost_writes_reported as i64);
    }
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String");
    out
}

/// Serves the endpoints on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, node: Arc<NodeService>) {
    let router = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let node = node.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        encode(&node).await,
                    )
                }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok\n" }));
    if let Err(e) = axum::serve(listener, router).await {
        tracing::error!(error = %e, "the HTTP endpoints stopped");
    }
}
