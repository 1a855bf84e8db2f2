//! Prometheus metrics of the metadata server.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VolumeLabels {
    pub volume: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LockLabels {
    /// `granted`, `conflict`, `waited` or `cancelled`.
    pub result: &'static str,
}

/// A delegation event, per volume.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DelegationLabels {
    pub volume: String,
    /// `granted`, `recalled`, `revoked`.
    pub event: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub delegations: Family<DelegationLabels, Gauge>,
    pub rpc_seconds: Family<OpLabels, Histogram>,
    pub rpc_errors: Family<OpLabels, Counter>,
    pub sessions: Gauge,
    pub lock_requests: Family<LockLabels, Counter>,
    pub gc_deleted: Counter,
    pub db_bytes: Family<VolumeLabels, Gauge>,
    pub commits: Family<VolumeLabels, Gauge>,
    pub syncs: Family<VolumeLabels, Gauge>,
    pub sync_seconds: Family<VolumeLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("stratusfs_meta");
        let rpc_seconds = Family::<OpLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.00005, 2.0, 18))
        });
        registry.register("rpc_seconds", "Latency of metadata RPCs, per operation", rpc_seconds.clone());
        let rpc_errors = Family::<OpLabels, Counter>::default();
        registry.register("rpc_errors", "Metadata RPCs that returned an error, per operation", rpc_errors.clone());
        let sessions = Gauge::default();
        registry.register("sessions", "Live sessions", sessions.clone());
        let lock_requests = Family::<LockLabels, Counter>::default();
        registry.register(
            "lock_requests",
            "SetLock requests by outcome; a waiter counts once however long it waits (clients do not poll)",
            lock_requests.clone(),
        );
        let gc_deleted = Counter::default();
        registry.register("gc_deleted_blocks", "Block objects deleted by the garbage collector", gc_deleted.clone());
        let db_bytes = Family::<VolumeLabels, Gauge>::default();
        registry.register("database_bytes", "Size of each volume's database file", db_bytes.clone());
        let commits = Family::<VolumeLabels, Gauge>::default();
        registry.register("commits", "Changes committed, per volume (since start)", commits.clone());
        let syncs = Family::<VolumeLabels, Gauge>::default();
        registry.register("syncs", "Durable (fsync) commits, per volume (since start)", syncs.clone());
        let sync_seconds = Family::<VolumeLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "sync_seconds",
            "Time spent in durable commits, per volume (since start); divide by syncs for the mean commit latency",
            sync_seconds.clone(),
        );
        let delegations = Family::<DelegationLabels, Gauge>::default();
        registry.register(
            "delegations",
            "Directory delegations granted, recalled (another session needed the directory) and revoked (not \
             given back in time), per volume (since start)",
            delegations.clone(),
        );
        Metrics {
            registry,
            delegations,
            rpc_seconds,
            rpc_errors,
            sessions,
            lock_requests,
            gc_deleted,
            db_bytes,
            commits,
            syncs,
            sync_seconds,
        }
    }

    /// Starts timing an RPC; the returned guard records its latency when dropped.
    pub fn time(self: &Arc<Self>, op: &'static str) -> RpcTimer {
        RpcTimer { metrics: self.clone(), op, start: Instant::now() }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

pub struct RpcTimer {
    metrics: Arc<Metrics>,
    op: &'static str,
    start: Instant,
}

impl Drop for RpcTimer {
    fn drop(&mut self) {
        self.metrics.rpc_seconds.get_or_create(&OpLabels { op: self.op }).observe(self.start.elapsed().as_secs_f64());
    }
}
