//! The CSI driver built as another executable: the e2e crate links the driver's library into a
//! binary of its own (another crate, another link, other addresses and layouts), so a rollout
//! test can switch the node plugin from one build to a different one. It runs exactly what
//! `stratusfs-csi` runs.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    stratusfs_csi::cli::run().await
}
