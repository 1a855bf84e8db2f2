//! `stratusfs-csi`: the CSI driver's one binary (docs/csi.md; the command line is `cli.rs`).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    stratusfs_csi::cli::run().await
}
