//! The block stores the core tests run on, one kind at a time: the same test function takes a
//! [`Backend`] and gets a volume on a local folder, MinIO, fake-gcs-server or Azurite.

use fs_core::BackendSpec;
use tempfile::TempDir;

use crate::azurite::Azurite;
use crate::gcs::FakeGcs;
use crate::minio::Minio;
use crate::{HarnessError, Result};

/// A kind of block store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A local folder (`file:///DIR`).
    Local,
    /// S3: MinIO.
    Minio,
    /// Google Cloud Storage: fake-gcs-server.
    Gcs,
    /// Azure Blob: Azurite.
    Azure,
}

/// A running store of one [`Backend`]: its emulator process (or folder) lives as long as this.
pub enum Store {
    Local(TempDir),
    Minio(Minio),
    Gcs(FakeGcs),
    Azure(Azurite),
}

impl Store {
    pub async fn start(backend: Backend) -> Result<Store> {
        Ok(match backend {
            Backend::Local => Store::Local(
                tempfile::Builder::new()
                    .prefix("stratusfs-blocks-")
                    .tempdir()
                    .map_err(HarnessError::io("creating a block-store folder"))?,
            ),
            Backend::Minio => Store::Minio(Minio::start().await?),
            Backend::Gcs => Store::Gcs(FakeGcs::start().await?),
            Backend::Azure => Store::Azure(Azurite::start().await?),
        })
    }

    /// The block-store spec of this store, under `prefix`.
    pub fn spec(&self, prefix: &str) -> BackendSpec {
        match self {
            Store::Local(dir) => BackendSpec::Local { path: dir.path().to_path_buf(), prefix: prefix.to_string() },
            Store::Minio(m) => m.backend_spec(prefix),
            Store::Gcs(g) => g.backend_spec(prefix),
            Store::Azure(a) => a.backend_spec(prefix),
        }
    }

    /// The store's HTTP endpoint (`http://127.0.0.1:PORT[/ACCOUNT]`); `None` for a folder.
    pub fn endpoint(&self) -> Option<&str> {
        match self {
            Store::Local(_) => None,
            Store::Minio(m) => Some(&m.endpoint),
            Store::Gcs(g) => Some(&g.endpoint),
            Store::Azure(a) => Some(&a.endpoint),
        }
    }
}

/// `spec` with the scheme, host and port of its endpoint replaced by those of `base`
/// (`http://127.0.0.1:PORT`), its path kept: the spec of the same store reached through a proxy.
/// A folder's spec is returned as it is.
pub fn through(mut spec: BackendSpec, base: &str) -> BackendSpec {
    if let BackendSpec::S3 { endpoint: Some(e), .. }
    | BackendSpec::Gcs { endpoint: Some(e), .. }
    | BackendSpec::Azure { endpoint: Some(e), .. } = &mut spec
    {
        let path = e.split_once("://").and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_string()));
        *e = format!("{}{}", base.trim_end_matches('/'), path.unwrap_or_default());
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn through_keeps_the_path_of_the_endpoint() {
        let az = BackendSpec::Azure {
            account: "a".into(),
            container: "c".into(),
            prefix: String::new(),
            endpoint: Some("http://127.0.0.1:10000/devstoreaccount1".into()),
            access_key: None,
        };
        let BackendSpec::Azure { endpoint, .. } = through(az, "http://127.0.0.1:5555") else { unreachable!() };
        assert_eq!(endpoint.as_deref(), Some("http://127.0.0.1:5555/devstoreaccount1"));
        let gcs = BackendSpec::Gcs {
            bucket: "b".into(),
            prefix: String::new(),
            endpoint: Some("http://127.0.0.1:4443".into()),
            service_account_key: None,
        };
        let BackendSpec::Gcs { endpoint, .. } = through(gcs, "http://127.0.0.1:5555/") else { unreachable!() };
        assert_eq!(endpoint.as_deref(), Some("http://127.0.0.1:5555"));
    }
}
