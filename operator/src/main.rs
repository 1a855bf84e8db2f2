//! `stratusfs-operator`: reconciles the stratusfs custom resources (docs/operator.md). Level-based:
//! each reconcile reads the resource and what it names, does what the spec asks, and writes the
//! status with server-side apply under one field manager; Events mark every change of Ready.
//!
//! One replica leads (a Lease, [`leader`]); the others wait. Built so far: BlockStores (the probe
//! and its condition) and the first part of Volumes (the metadata server's children, [`volume`]).

mod blockstore;
mod certs;
mod children;
mod http;
mod leader;
mod volume;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::core::NamespaceResourceScope;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use stratusfs_api::{BlockStore, Volume};

/// The field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "stratusfs-operator";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("making a certificate: {0}")]
    Certificate(String),
    #[error("{0}")]
    Finalizer(String),
    /// A deletion that must wait (what for is in the message).
    #[error("{0}")]
    Held(String),
}

/// What every reconcile shares.
pub struct Ctx {
    pub client: Client,
    recorder: Recorder,
    pub metrics: Arc<http::Metrics>,
    /// The operator's own namespace (its Lease, the installation's CA).
    pub namespace: String,
    /// The image the metadata servers run (a Volume's spec may name another).
    pub image: String,
    /// Where to dial a Service's `HOST:PORT` instead (`--service-address`); TLS is still verified
    /// for the Service's name.
    pub service_addresses: std::collections::BTreeMap<String, String>,
    /// Each BlockStore's last check: the spec it checked (credentials included, hashed), when,
    /// and what it found; a reconcile within a minute of it for the same spec reuses it.
    pub checks: parking_lot::Mutex<std::collections::HashMap<String, (u64, std::time::Instant, blockstore::Checked)>>,
    /// Failures in a row per object (the error policy's backoff).
    pub failures: parking_lot::Mutex<std::collections::HashMap<String, u32>>,
    /// Each Volume's admin client, kept while its server answers.
    pub admins: parking_lot::Mutex<std::collections::HashMap<ObjectRef<Volume>, fs_core::AdminClient>>,
}

impl Ctx {
    /// Publishes an Event on `obj` (failures to publish are logged, never fatal).
    pub async fn event<K: Resource<DynamicType = ()>>(&self, obj: &K, ok: bool, reason: &str, note: &str) {
        let reference: ObjectReference = obj.object_ref(&());
        let ev = Event {
            type_: if ok { EventType::Normal } else { EventType::Warning },
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &reference).await {
            tracing::warn!(error = %e, "publishing an event failed");
        }
    }

    /// Writes `status` as `obj`'s status (server-side apply under the operator's field manager).
    pub async fn patch_status<K>(&self, obj: &K, status: &impl serde::Serialize) -> Result<(), Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), &obj.namespace().unwrap_or_default());
        let patch = serde_json::json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status});
        api.patch_status(&obj.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
        Ok(())
    }

    /// Counts a reconcile of a `K` that ended with `result` (`ready`, `not_ready`, `error`).
    pub fn count<K: Resource<DynamicType = ()>>(&self, result: &'static str) {
        let labels = http::ReconcileLabels { kind: K::kind(&()).into_owned(), result };
        self.metrics.reconciles.get_or_create(&labels).inc();
    }
}

/// An `Api` of `K` in namespace `ns`, or in all namespaces.
fn scoped<K>(client: &Client, ns: &Option<String>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// What a controller's reconcile ended with: a success ends the object's run of failures (its
/// backoff starts again from the shortest wait); an error was logged by the error policy.
fn reported<K, E: std::fmt::Display>(
    ctx: Arc<Ctx>,
) -> impl FnMut(Result<(ObjectRef<K>, Action), E>) -> futures::future::Ready<()>
where
    K: Resource<DynamicType = ()>,
{
    move |r| {
        match r {
            Ok((o, _)) => {
                ctx.failures.lock().remove(&failure_key::<K>(o.namespace.as_deref(), &o.name));
            }
            Err(e) => tracing::debug!(error = %e, "reconcile"),
        }
        futures::future::ready(())
    }
}

/// The key of an object's run of failures.
fn failure_key<K: Resource<DynamicType = ()>>(ns: Option<&str>, name: &str) -> String {
    format!("{}/{}/{name}", K::kind(&()), ns.unwrap_or_default())
}

/// How long to wait after the `n`th failure in a row: 5 s, doubling, at most 5 minutes.
fn backoff(n: u32) -> Duration {
    Duration::from_secs(5u64 << n.saturating_sub(1).min(6)).min(Duration::from_secs(300))
}

/// A condition of `type_` with this status, reason and message; its transition time is kept from
/// `old` when the status did not change.
pub fn condition(
    old: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let since = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// Whether `new` differs from the condition of its type in `old` (in status or reason).
pub fn transitions(old: &[Condition], new: &Condition) -> bool {
    !old.iter().any(|c| c.type_ == new.type_ && c.status == new.status && c.reason == new.reason)
}

#[derive(clap::Parser)]
#[command(version, about = "The stratusfs operator: reconciles BlockStores and Volumes")]
struct Args {
    /// Watch only this namespace (default: all).
    #[arg(long, env = "STRATUSFS_NAMESPACE")]
    namespace: Option<String>,
    /// Where /metrics, /healthz and /readyz answer (plain HTTP).
    #[arg(long, default_value = "0.0.0.0:8080")]
    http_listen: std::net::SocketAddr,
    /// Dial `SERVICE_HOST:PORT` (e.g. `data-meta.team.svc:7480`) at `HOST:PORT` instead, still
    /// verifying TLS for the Service's name: for an operator outside the cluster's network (a
    /// port-forward, the tests). Repeatable.
    #[arg(long = "service-address", value_name = "SERVICE_HOST:PORT=HOST:PORT", value_parser = stratusfs_api::parse_service_address)]
    service_addresses: Vec<(String, String)>,
}

fn error_policy<K: Resource<DynamicType = ()>>(obj: Arc<K>, e: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.count::<K>("error");
    let n = {
        let mut failures = ctx.failures.lock();
        let n = failures.entry(failure_key::<K>(obj.namespace().as_deref(), &obj.name_any())).or_insert(0);
        *n += 1;
        *n
    };
    let wait = backoff(n);
    tracing::warn!(kind = %K::kind(&()), name = %obj.name_any(), error = %e, failures = n, "reconcile failed; trying again in {wait:?}");
    Action::requeue(wait)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    fs_core::tls::install_crypto_provider();
    let args = <Args as clap::Parser>::parse();
    let client = Client::try_default().await?;
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let lease_ns = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| client.default_namespace().to_string());
    let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: Some(identity.clone()) };
    let metrics = Arc::new(http::Metrics::new());
    let listener = tokio::net::TcpListener::bind(args.http_listen).await.map_err(|e| {
        anyhow::anyhow!("listening on {} for /metrics and /healthz: {e}; give another --http-listen", args.http_listen)
    })?;
    tokio::spawn(http::serve(listener, metrics.clone()));
    let image = std::env::var("STRATUSFS_IMAGE")
        .unwrap_or_else(|_| format!("ghcr.io/stratusfs/stratusfs:{}", env!("CARGO_PKG_VERSION")));
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        metrics: metrics.clone(),
        namespace: lease_ns.clone(),
        image,
        service_addresses: args.service_addresses.into_iter().collect(),
        admins: Default::default(),
        failures: Default::default(),
        checks: Default::default(),
    });
    let controller = Controller::new(scoped::<BlockStore>(&client, &args.namespace), watcher::Config::default());
    let cache = controller.store();
    tracing::info!(namespace = args.namespace.as_deref().unwrap_or("(all)"), identity = %identity, "stratusfs-operator started");
    let leader = leader::Leader::new(client.clone(), &lease_ns, identity);
    tokio::select! {
        r = leader.acquire() => r?,
        _ = shutdown() => return Ok(()),
    }
    tracing::info!(lease = leader::LEASE, namespace = %lease_ns, "leading: reconciling");
    metrics.leader.set(1);
    let ns = &args.namespace;
    // Volumes trigger a reconcile when their spec, finalizers or deletion change, not when the
    // operator writes their status (a busy volume's usage would otherwise loop reconciles); the
    // cache still sees every change.
    let (volume_cache, volume_writer) = kube::runtime::reflector::store();
    let changed = watcher(scoped::<Volume>(&client, ns), watcher::Config::default())
        .default_backoff()
        .reflect(volume_writer)
        .applied_objects()
        .predicate_filter(spec_or_lifecycle, Default::default());
    let volumes = Controller::for_stream(changed, volume_cache.clone());
    let (secret_stores, secret_volumes) = (cache.clone(), volume_cache.clone());
    let (trigger, triggered) = futures::channel::mpsc::unbounded();
    tokio::spawn(volume::refresh(ctx.clone(), volume_cache.clone(), trigger));
    let volume_run = volumes
        // A server whose usage changed or that stopped answering (volume::refresh).
        .reconcile_on(triggered)
        // A BlockStore that changes (turns Ready, its credentials): every Volume on it.
        .watches(scoped::<BlockStore>(&client, ns), watcher::Config::default(), move |bs: BlockStore| {
            let (ns, name) = (bs.namespace(), bs.name_any());
            volume_cache
                .state()
                .into_iter()
                .filter(|v| v.namespace() == ns && v.spec.block_store == name)
                .map(|v| ObjectRef::from_obj(v.as_ref()))
                .collect::<Vec<_>>()
        })
        // A child deleted or changed by hand: the Volume is reconciled and it is made again.
        .owns(scoped::<StatefulSet>(&client, ns), watcher::Config::default())
        .owns(scoped::<Service>(&client, ns), watcher::Config::default())
        // A Secret: the Volume owning it (made again when deleted), and every Volume it gives a
        // key or credentials to (a rekey or a rotation is acted on at once). One watch of Secrets.
        .watches(scoped::<Secret>(&client, ns), watcher::Config::default(), move |secret: Secret| {
            let (ns, name) = (secret.namespace(), secret.name_any());
            let stores: Vec<String> = secret_stores
                .state()
                .into_iter()
                .filter(|bs| bs.namespace() == ns && names_secret(bs, &name))
                .map(|bs| bs.name_any())
                .collect();
            let owners = secret.owner_references().iter().filter(|o| o.kind == "Volume").map(|o| o.name.clone());
            let users = secret_volumes
                .state()
                .into_iter()
                .filter(|v| {
                    v.namespace() == ns
                        && (stores.contains(&v.spec.block_store)
                            || v.spec.encryption.as_ref().is_some_and(|e| e.secret_ref.name == name))
                })
                .map(|v| v.name_any());
            let within = ns.clone().unwrap_or_default();
            owners.chain(users).map(|v| ObjectRef::<Volume>::new(&v).within(&within)).collect::<Vec<_>>()
        })
        .shutdown_on_signal()
        .run(volume::reconcile, error_policy, ctx.clone())
        .for_each(reported::<Volume, _>(ctx.clone()));
    let blockstore_run = controller
        // A Volume that comes or goes: its BlockStore (a deletion held for it may go on).
        .watches(scoped::<Volume>(&client, ns), watcher::Config::default(), |v: Volume| {
            Some(ObjectRef::<BlockStore>::new(&v.spec.block_store).within(&v.namespace().unwrap_or_default()))
        })
        // A changed credentials Secret: every BlockStore naming it is checked again.
        .watches(scoped::<Secret>(&client, ns), watcher::Config::default(), move |secret: Secret| {
            let (ns, name) = (secret.namespace(), secret.name_any());
            cache
                .state()
                .into_iter()
                .filter(|bs| bs.namespace() == ns && names_secret(bs, &name))
                .map(|bs| ObjectRef::from_obj(bs.as_ref()))
                .collect::<Vec<_>>()
        })
        .shutdown_on_signal()
        .run(blockstore::reconcile, error_policy, ctx.clone())
        .for_each(reported::<BlockStore, _>(ctx));
    tokio::select! {
        _ = futures::future::join(blockstore_run, volume_run) => {
            leader.release().await;
            tracing::info!("stopped");
            Ok(())
        }
        _ = leader.keep() => anyhow::bail!("lost the lease: exiting, so that only one replica reconciles"),
    }
}

/// What makes a Volume worth reconciling: its spec (generation), its finalizers and its deletion.
fn spec_or_lifecycle(v: &Volume) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.meta().generation.hash(&mut h);
    v.meta().finalizers.hash(&mut h);
    v.meta().deletion_timestamp.as_ref().map(|t| t.0.to_string()).hash(&mut h);
    Some(h.finish())
}

/// SIGINT or SIGTERM.
async fn shutdown() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Whether BlockStore `bs` takes its credentials from Secret `name`.
fn names_secret(bs: &BlockStore, name: &str) -> bool {
    let s = &bs.spec;
    [
        s.s3.as_ref().map(|x| &x.credentials_secret),
        s.gcs.as_ref().map(|x| &x.credentials_secret),
        s.azure.as_ref().map(|x| &x.credentials_secret),
    ]
    .into_iter()
    .flatten()
    .any(|r| r.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_from_5_seconds_to_5_minutes() {
        let waits: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
    }
}
