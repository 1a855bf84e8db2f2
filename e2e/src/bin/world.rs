//! `stratusfs-world`: starts the local services the tests run against and prints where they
//! listen, until Ctrl-C. (Until `stratusfs up` exists, this is the README's run command.)

use anyhow::Context;
use clap::{Parser, ValueEnum};
use e2e::{azurite::Azurite, gcs::FakeGcs, kube::ControlPlane, minio::Minio};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Part {
    Minio,
    Gcs,
    Azurite,
    Kube,
}

/// Start MinIO, fake-gcs-server, Azurite and a Kubernetes control plane on 127.0.0.1.
#[derive(Parser)]
struct Args {
    /// Which services to start (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    e2e::init();
    let args = Args::parse();
    let want = |p: Part| args.only.is_empty() || args.only.contains(&p);

    let mut lines = Vec::new();
    let minio = match want(Part::Minio) {
        true => Some(Minio::start().await.context("starting MinIO")?),
        false => None,
    };
    if let Some(m) = &minio {
        lines.push(format!(
            "MinIO (S3)        {}  bucket={} access_key={} secret_key={} region={}",
            m.endpoint, m.bucket, m.access_key, m.secret_key, m.region
        ));
    }
    let gcs = match want(Part::Gcs) {
        true => Some(FakeGcs::start().await.context("starting fake-gcs-server")?),
        false => None,
    };
    if let Some(g) = &gcs {
        lines.push(format!("fake-gcs-server   {}  bucket={} (no credentials)", g.endpoint, g.bucket));
    }
    let azurite = match want(Part::Azurite) {
        true => Some(Azurite::start().await.context("starting Azurite")?),
        false => None,
    };
    if let Some(a) = &azurite {
        lines.push(format!(
            "Azurite (blob)    {}  container={} account={} key={}",
            a.endpoint, a.container, a.account, a.account_key
        ));
    }
    let kube = match want(Part::Kube) {
        true => Some(ControlPlane::start().await.context("starting the Kubernetes control plane")?),
        false => None,
    };
    if let Some(k) = &kube {
        lines.push(format!("Kubernetes        {}  KUBECONFIG={}", k.server, k.kubeconfig.display()));
    }

    println!("stratusfs test world is up (Ctrl-C stops everything):");
    for l in &lines {
        println!("  {l}");
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    println!("stopping");
    Ok(())
}
