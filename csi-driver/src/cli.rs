//! The command line of `stratusfs-csi` (the binary's edge: errors are `anyhow` here). `--controller`
//! serves Identity and Controller (the chart's Deployment, beside external-provisioner and
//! external-resizer); `--node` serves Identity and Node (the chart's DaemonSet, running the FUSE
//! sessions).

use std::path::PathBuf;
use std::sync::Arc;

use crate::cluster::Cluster;
use crate::controller::ControllerService;
use crate::node::{NodeConfig, NodeService};
use crate::server::{self, Services};
use anyhow::Context;
use clap::Parser;

#[derive(Parser)]
#[command(version, about = "The stratusfs CSI driver (csi.stratusfs.io)")]
struct Args {
    /// The Unix socket to serve on: unix:///PATH or /PATH.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    endpoint: String,
    /// Serve the Controller service (dynamic provisioning; needs the Kubernetes API).
    #[arg(long)]
    controller: bool,
    /// Serve the Node service (FUSE sessions and bind mounts; needs root and /dev/fuse).
    #[arg(long)]
    node: bool,
    /// Be the node's fd holder instead (the node pod's `fd-holder` container): keep the FUSE
    /// sessions' fds on `<state-dir>/holder.sock` so they outlive a crash of the node plugin.
    #[arg(long, conflicts_with_all = ["controller", "node"])]
    fd_holder: bool,
    /// This node's name (NodeGetInfo).
    #[arg(long, env = "NODE_NAME")]
    node_id: Option<String>,
    /// The driver's namespace: claims' token Secrets are kept here.
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: Option<String>,
    /// Sessions' mount points and secrets (a host path).
    #[arg(long, default_value = "/var/lib/stratusfs-csi")]
    state_dir: PathBuf,
    /// The L2 disk cache's host path (none: no disk cache).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// The L2 disk cache's size per session, MiB.
    #[arg(long, default_value_t = 10240)]
    cache_mib: u64,
    /// Where the node plugin's /metrics and /healthz answer (plain HTTP; none: not served).
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Dial `SERVICE_HOST:PORT` (e.g. `data-meta.team.svc:7480`) at `HOST:PORT` instead, still
    /// verifying TLS for the Service's name (the tests, a driver outside the cluster's network).
    #[arg(long = "service-address", value_name = "SERVICE_HOST:PORT=HOST:PORT", value_parser = stratusfs_api::parse_service_address)]
    service_addresses: Vec<(String, String)>,
}

/// The whole program: parses the arguments and serves until a signal (or, for the node service,
/// until a successor took the node's sessions over).
pub async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    fs_core::tls::install_crypto_provider();
    let args = Args::parse();
    if args.fd_holder {
        let dir = args.state_dir.clone();
        let held = tokio::task::spawn_blocking(move || crate::holder::serve(&dir));
        tokio::select! {
            r = held => r.context("the fd holder's thread")?.with_context(|| format!("the fd holder on {}", args.state_dir.display()))?,
            _ = signalled() => {}
        }
        return Ok(());
    }
    if !args.controller && !args.node {
        anyhow::bail!("give --controller, --node or both (or --fd-holder): which CSI services this process serves");
    }
    let path = server::socket_path(&args.endpoint)?;
    let addresses: std::collections::BTreeMap<String, String> = args.service_addresses.into_iter().collect();
    let controller = match args.controller {
        true => {
            let client = kube::Client::try_default()
                .await
                .context("the controller needs the Kubernetes API (in-cluster config or KUBECONFIG)")?;
            let namespace = args.namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
            Some(ControllerService::new(Arc::new(Cluster::new(client, namespace, addresses.clone()))))
        }
        false => None,
    };
    let node = match args.node {
        true => {
            fs_core::mount::keep_freed_buffers();
            let node_id = args.node_id.clone().context("the node service needs --node-id (or NODE_NAME)")?;
            let cfg = NodeConfig {
                node_id,
                state_dir: args.state_dir.clone(),
                cache_dir: args.cache_dir.clone(),
                cache_mib: args.cache_mib,
                service_addresses: addresses,
            };
            let node = match NodeService::start(cfg).await {
                Ok(n) => n,
                Err(crate::error::CsiError::HandoverRefused(why)) => {
                    // The rollout stalls here (this pod restarts with backoff): say so on the pod.
                    pod_event("HandoverRefused", &why).await;
                    anyhow::bail!("{why}");
                }
                Err(e) => return Err(e.into()),
            };
            if let Some(addr) = args.metrics_listen {
                // The sessions are this process's now: nothing may make it exit. A port still
                // held (a predecessor sharing the network namespace, hostNetwork) is retried.
                let node = node.clone();
                tokio::spawn(async move {
                    let mut logged = false;
                    let listener = loop {
                        match tokio::net::TcpListener::bind(addr).await {
                            Ok(l) => break l,
                            Err(e) => {
                                if !logged {
                                    tracing::warn!(%addr, error = %e, "cannot listen for /metrics and /healthz yet (the predecessor's port?); retrying every second");
                                    logged = true;
                                }
                                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                            }
                        }
                    };
                    crate::metrics::serve(listener, node).await
                });
            }
            Some(node)
        }
        false => None,
    };
    // SIGTERM or SIGINT, seen by whoever waits for it, whenever it came.
    let (signal_tx, signal_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        signalled().await;
        let _ = signal_tx.send(true);
    });
    let signal = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|&s| s).await;
    };
    let handed_over = |node: Option<Arc<NodeService>>| async move {
        match node {
            Some(n) => n.handed_over().await,
            None => std::future::pending().await,
        }
    };
    let shutdown = {
        let (sig, handed) = (signal(signal_rx.clone()), handed_over(node.clone()));
        async move {
            tokio::select! {
                _ = sig => {}
                _ = handed => {}
            }
        }
    };
    let watched = node.clone();
    let served = server::serve(&path, Services { controller, node }, shutdown);
    // After a handover, CSI calls in flight get a moment to finish (they answer UNAVAILABLE);
    // a client that keeps its connection open does not hold this process up.
    let drained = {
        let handed = handed_over(watched.clone());
        async move {
            handed.await;
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        }
    };
    tokio::select! {
        r = served => r?,
        _ = drained => tracing::warn!("CSI connections were still open 5 s after the handover; leaving them"),
    }
    if watched.is_some_and(|n| n.is_handed_over()) {
        // Exiting now would have the container restarted (restartPolicy Always) and take the
        // sessions back; the DaemonSet removes this pod once its successor is ready.
        tracing::info!("the successor serves the node; waiting for SIGTERM (the DaemonSet removes this pod)");
        signal(signal_rx).await;
    }
    Ok(())
}

/// A Warning Event on this plugin's own Pod (`POD_NAME`, `POD_NAMESPACE`, `POD_UID` from the
/// downward API; the Kubernetes API from the in-cluster config or `KUBECONFIG`). Best effort:
/// without them it is only logged.
async fn pod_event(reason: &str, note: &str) {
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let (Ok(name), Ok(namespace)) = (std::env::var("POD_NAME"), std::env::var("POD_NAMESPACE")) else {
        tracing::warn!(reason, "no POD_NAME/POD_NAMESPACE: the event is only logged");
        return;
    };
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, reason, "no Kubernetes API to publish the event on");
            return;
        }
    };
    let reporter = Reporter { controller: "stratusfs-csi-node".into(), instance: std::env::var("NODE_NAME").ok() };
    let pod = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(name),
        namespace: Some(namespace),
        uid: std::env::var("POD_UID").ok(),
        ..Default::default()
    };
    let ev = Event {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Handover".into(),
        secondary: None,
    };
    if let Err(e) = Recorder::new(client, reporter).publish(&ev, &pod).await {
        tracing::warn!(error = %e, reason, "publishing the event failed");
    }
}

/// SIGTERM or SIGINT.
async fn signalled() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
