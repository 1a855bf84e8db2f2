//! `stratusfs-csi`: the CSI driver's one binary (docs/csi.md). `--controller` serves Identity and
//! Controller (the chart's Deployment, beside external-provisioner and external-resizer);
//! `--node` serves Identity and Node (the chart's DaemonSet, running the FUSE sessions).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use stratusfs_csi::cluster::Cluster;
use stratusfs_csi::controller::ControllerService;
use stratusfs_csi::node::{NodeConfig, NodeService};
use stratusfs_csi::server::{self, Services};

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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    fs_core::tls::install_crypto_provider();
    let args = Args::parse();
    if !args.controller && !args.node {
        anyhow::bail!("give --controller, --node or both: which CSI services this process serves");
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
            let node = Arc::new(NodeService::new(cfg)?);
            if let Some(addr) = args.metrics_listen {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("listening on {addr} for /metrics; give another --metrics-listen"))?;
                tokio::spawn(stratusfs_csi::metrics::serve(listener, node.clone()));
            }
            Some(node)
        }
        false => None,
    };
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    server::serve(&path, Services { controller, node }, shutdown).await?;
    Ok(())
}
