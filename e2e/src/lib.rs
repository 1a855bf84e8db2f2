//! The stratusfs test world: real services started as child processes on 127.0.0.1.
//!
//! Every fixture here starts a real program (MinIO, fake-gcs-server, Azurite, etcd +
//! kube-apiserver + kube-controller-manager) at the version pinned in `e2e/tools/versions`, on a
//! free port, with its own temporary directory. It waits until the program answers, exposes its
//! address and credentials, keeps its log (printed when the test panics) and kills the program and
//! everything it started when the fixture is dropped, panics included.
//!
//! Tools are installed by `e2e/tools/install`; a missing one is a [`HarnessError::ToolMissing`]
//! that says which command installs it.

pub mod azurite;
pub mod certs;
pub mod csi;
pub mod error;
pub mod gcs;
pub mod kube;
pub mod minio;
pub mod mountd;
pub mod pods;
pub mod probe;
pub mod proxy;
pub mod service;
pub mod sign;
pub mod stores;
pub mod stratusfs;
pub mod suites;
pub mod tools;

pub use error::HarnessError;

/// Result of harness operations.
pub type Result<T, E = HarnessError> = std::result::Result<T, E>;

/// Process-wide set-up for tests and the world binary: the rustls provider and a log subscriber
/// (`RUST_LOG` filters; default `info`). Safe to call many times.
pub fn init() {
    fs_core::tls::install_crypto_provider();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
}

/// Every file under `dir`, recursively (what a test searches for bytes that must not be there).
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}
