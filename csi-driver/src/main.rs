//! `stratusfs-csi`: the CSI driver's one binary (docs/csi.md).

use clap::Parser;
use stratusfs_csi::identity::IdentityService;
use stratusfs_csi::server;

#[derive(Parser)]
#[command(version, about = "The stratusfs CSI driver (csi.stratusfs.io)")]
struct Args {
    /// The Unix socket to serve on: unix:///PATH or /PATH.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    endpoint: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let path = server::socket_path(&args.endpoint)?;
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    server::serve(&path, IdentityService { controller: false }, shutdown).await?;
    Ok(())
}
