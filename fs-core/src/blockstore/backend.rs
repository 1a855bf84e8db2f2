//! Object-storage backends: a volume's block-store spec and the client built from it.
//!
//! The spec is data (it travels from the metadata server to authenticated mounts), so it holds
//! everything a client needs and nothing process-global: no environment variables are read.

use std::path::PathBuf;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::prefix::PrefixStore;
use serde::{Deserialize, Serialize};

/// Where a volume's blocks live. `prefix` (if any) is prepended to every object key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum BackendSpec {
    /// A directory on local disk (also a shared mount such as NFS).
    Local {
        path: PathBuf,
        #[serde(default)]
        prefix: String,
    },
    /// Process memory: tests and benchmarks only; nothing survives the process.
    Memory {
        #[serde(default)]
        prefix: String,
    },
    /// Amazon S3 or any S3-compatible store (MinIO, Ceph RGW, ...).
    S3 {
        bucket: String,
        #[serde(default)]
        prefix: String,
        /// `http(s)://host:port` of an S3-compatible store; `None` means AWS.
        endpoint: Option<String>,
        region: Option<String>,
        access_key_id: Option<String>,
        secret_access_key: Option<String>,
        session_token: Option<String>,
        /// Address the bucket as `BUCKET.host` rather than `host/BUCKET` (with `endpoint`; AWS
        /// itself is always addressed by host).
        #[serde(default)]
        virtual_hosted_style: bool,
        /// Encryption the store applies to every object this volume writes (`x-amz-server-side-encryption`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        server_side_encryption: Option<Sse>,
    },
    /// Google Cloud Storage.
    Gcs {
        bucket: String,
        #[serde(default)]
        prefix: String,
        /// Base URL of the JSON API (an emulator such as fake-gcs-server); `None` means Google.
        endpoint: Option<String>,
        /// A service-account key (JSON). With `endpoint` set and no key, requests are unauthenticated.
        service_account_key: Option<String>,
    },
    /// Azure Blob Storage.
    Azure {
        account: String,
        container: String,
        #[serde(default)]
        prefix: String,
        /// Account URL, e.g. `http://127.0.0.1:10000/devstoreaccount1` for Azurite; `None` means
        /// `https://ACCOUNT.blob.core.windows.net`.
        endpoint: Option<String>,
        access_key: Option<String>,
    },
}

/// A block-store spec that cannot be turned into a working client.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("block store {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("block store {url}: no credentials; set {vars}")]
    Credentials { url: String, vars: &'static str },
    #[error("block store {url}: the bucket or container does not exist ({detail}); create it first")]
    NoBucket { url: String, detail: String },
    #[error("block store {url}: access denied ({detail}); check the keys and their rights on the bucket")]
    Denied { url: String, detail: String },
    #[error("block store {url}: cannot reach {endpoint} ({detail}); check the endpoint's address and that it runs")]
    Unreachable { url: String, endpoint: String, detail: String },
    #[error("block store {url}: a test object could not be written, read and deleted ({detail})")]
    Probe { url: String, detail: String },
    #[error("block store directory {path}: {source}; create it or fix the path in the block-store spec")]
    LocalDir { path: PathBuf, source: std::io::Error },
    #[error("block store {backend} endpoint {endpoint:?} is not a URL ({source}); give scheme://host[:port]")]
    Endpoint { backend: &'static str, endpoint: String, source: url::ParseError },
    #[error("block store {backend}: {source}; check the bucket, endpoint and credentials in the block-store spec")]
    Build { backend: &'static str, source: object_store::Error },
}

impl BackendSpec {
    /// The backend's name as users write it (`local`, `s3`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            BackendSpec::Local { .. } => "local",
            BackendSpec::Memory { .. } => "memory",
            BackendSpec::S3 { .. } => "s3",
            BackendSpec::Gcs { .. } => "gcs",
            BackendSpec::Azure { .. } => "azure",
        }
    }

    /// The address requests go to.
    pub fn endpoint_url(&self) -> String {
        match self {
            BackendSpec::Local { path, .. } => format!("file://{}", path.display()),
            BackendSpec::Memory { .. } => "memory".into(),
            BackendSpec::S3 { endpoint: Some(e), .. }
            | BackendSpec::Gcs { endpoint: Some(e), .. }
            | BackendSpec::Azure { endpoint: Some(e), .. } => e.clone(),
            BackendSpec::S3 { region, .. } => {
                format!("https://s3.{}.amazonaws.com", region.as_deref().unwrap_or("us-east-1"))
            }
            BackendSpec::Gcs { .. } => "https://storage.googleapis.com".into(),
            BackendSpec::Azure { account, .. } => format!("https://{account}.blob.core.windows.net"),
        }
    }

    fn prefix(&self) -> &str {
        match self {
            BackendSpec::Local { prefix, .. }
            | BackendSpec::Memory { prefix }
            | BackendSpec::S3 { prefix, .. }
            | BackendSpec::Gcs { prefix, .. }
            | BackendSpec::Azure { prefix, .. } => prefix,
        }
    }
}

/// S3 server-side encryption: no key id is SSE-S3 (`AES256`, keys the store manages), a key id is
/// SSE-KMS (`aws:kms` with that key). The store encrypts at rest; stratusfs's own end-to-end
/// encryption is separate (docs/block-stores.md).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
}

/// How hard a client tries before it reports an error.
#[derive(Clone, Debug)]
pub struct Tuning {
    pub retry: object_store::RetryConfig,
    pub connect_timeout: std::time::Duration,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning { retry: object_store::RetryConfig::default(), connect_timeout: std::time::Duration::from_secs(5) }
    }
}

impl Tuning {
    /// For a mount's block requests: transient failures (5xx, throttling, timeouts, refused or
    /// reset connections) are retried with exponential backoff and jitter for up to `wait`.
    pub fn waiting(wait: std::time::Duration) -> Tuning {
        Tuning {
            retry: object_store::RetryConfig { max_retries: usize::MAX, retry_timeout: wait, ..Default::default() },
            ..Default::default()
        }
    }

    /// For a check a user waits on: one retry, ten seconds in all.
    pub fn impatient() -> Tuning {
        Tuning {
            retry: object_store::RetryConfig {
                max_retries: 1,
                retry_timeout: std::time::Duration::from_secs(10),
                ..Default::default()
            },
            connect_timeout: std::time::Duration::from_secs(3),
        }
    }
}

/// Builds the object-store client a spec describes. Creates nothing remote: a missing bucket shows
/// up on the first request ([`check_backend`] asks at once).
pub fn open_backend(spec: &BackendSpec) -> Result<Arc<dyn ObjectStore>, BackendError> {
    open_backend_with(spec, &Tuning::default())
}

/// [`open_backend`] with the retries and timeouts of `tuning`.
pub fn open_backend_with(spec: &BackendSpec, tuning: &Tuning) -> Result<Arc<dyn ObjectStore>, BackendError> {
    let backend = spec.kind();
    // Plain http only where the spec's endpoint says so.
    let options = |endpoint: &Option<String>| -> Result<object_store::ClientOptions, BackendError> {
        let http = match endpoint {
            Some(e) => check_url(backend, e)?.scheme() == "http",
            None => false,
        };
        Ok(object_store::ClientOptions::new().with_allow_http(http).with_connect_timeout(tuning.connect_timeout))
    };
    let build = |source| BackendError::Build { backend, source };
    let store: Arc<dyn ObjectStore> = match spec {
        BackendSpec::Local { path, .. } => {
            std::fs::create_dir_all(path).map_err(|source| BackendError::LocalDir { path: path.clone(), source })?;
            // fsync on put: a block is durable when its upload returns, as on S3 or GCS, so the
            // commit an fsync waits for never names a block a power loss could take back.
            Arc::new(LocalFileSystem::new_with_prefix(path).map_err(build)?.with_fsync(true))
        }
        BackendSpec::Memory { .. } => Arc::new(InMemory::new()),
        BackendSpec::S3 {
            bucket,
            endpoint,
            region,
            access_key_id,
            secret_access_key,
            session_token,
            virtual_hosted_style,
            server_side_encryption,
            ..
        } => {
            let mut b = AmazonS3Builder::new()
                .with_bucket_name(bucket)
                .with_region(region.as_deref().unwrap_or("us-east-1"))
                .with_retry(tuning.retry.clone())
                .with_client_options(options(endpoint)?);
            if let Some(endpoint) = endpoint {
                b = b.with_endpoint(endpoint).with_virtual_hosted_style_request(*virtual_hosted_style);
            }
            if let Some(v) = access_key_id {
                b = b.with_access_key_id(v);
            }
            if let Some(v) = secret_access_key {
                b = b.with_secret_access_key(v);
            }
            if let Some(v) = session_token {
                b = b.with_token(v);
            }
            match server_side_encryption {
                Some(Sse { kms_key_id: Some(key) }) => b = b.with_sse_kms_encryption(key),
                Some(Sse { kms_key_id: None }) => {
                    // object_store names SSE-S3 only through its config key (the key's enum is private).
                    let key: AmazonS3ConfigKey =
                        "aws_server_side_encryption".parse().expect("object_store's own config key");
                    b = b.with_config(key, "AES256")
                }
                None => {}
            }
            Arc::new(b.build().map_err(build)?)
        }
        BackendSpec::Gcs { bucket, endpoint, service_account_key, .. } => {
            let mut b = GoogleCloudStorageBuilder::new()
                .with_bucket_name(bucket)
                .with_retry(tuning.retry.clone())
                .with_client_options(options(endpoint)?);
            match (endpoint, service_account_key) {
                (_, Some(key)) => b = b.with_service_account_key(key),
                // An emulator without credentials: object_store's documented emulator key.
                (Some(_), None) => {
                    b = b.with_service_account_key(
                        r#"{"private_key":"","private_key_id":"","client_email":"","disable_oauth":true}"#,
                    )
                }
                (None, None) => {}
            }
            if let Some(endpoint) = endpoint {
                b = b.with_base_url(endpoint.trim_end_matches('/'));
            }
            Arc::new(b.build().map_err(build)?)
        }
        BackendSpec::Azure { account, container, endpoint, access_key, .. } => {
            let mut b = MicrosoftAzureBuilder::new()
                .with_account(account)
                .with_container_name(container)
                .with_retry(tuning.retry.clone())
                .with_client_options(options(endpoint)?);
            if let Some(endpoint) = endpoint {
                b = b.with_endpoint(endpoint.trim_end_matches('/').to_string());
            }
            if let Some(key) = access_key {
                b = b.with_access_key(key);
            }
            Arc::new(b.build().map_err(build)?)
        }
    };
    Ok(match spec.prefix().trim_matches('/') {
        "" => store,
        prefix => Arc::new(PrefixStore::new(store, prefix)),
    })
}

fn check_url(backend: &'static str, endpoint: &str) -> Result<url::Url, BackendError> {
    url::Url::parse(endpoint).map_err(|source| BackendError::Endpoint {
        backend,
        endpoint: endpoint.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::{ObjectStoreExt, PutPayload, path::Path};

    #[tokio::test]
    async fn local_backend_with_prefix_stores_under_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let spec = BackendSpec::Local { path: dir.path().join("blocks"), prefix: "vol1".into() };
        let store = open_backend(&spec).unwrap();
        store.put(&Path::from("a/b"), PutPayload::from_static(b"hello")).await.unwrap();
        let on_disk = std::fs::read(dir.path().join("blocks/vol1/a/b")).unwrap();
        assert_eq!(on_disk, b"hello");
        let got = store.get(&Path::from("a/b")).await.unwrap().bytes().await.unwrap();
        assert_eq!(&got[..], b"hello");
    }

    #[test]
    fn bad_endpoint_names_the_backend_and_the_value() {
        let spec = BackendSpec::S3 {
            bucket: "b".into(),
            prefix: String::new(),
            endpoint: Some("not a url".into()),
            region: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            virtual_hosted_style: false,
            server_side_encryption: None,
        };
        let err = open_backend(&spec).err().unwrap().to_string();
        assert!(err.contains("s3") && err.contains("not a url"), "{err}");
    }

    #[test]
    fn spec_round_trips_through_json_with_backend_tag() {
        let spec = BackendSpec::Gcs {
            bucket: "b".into(),
            prefix: "p".into(),
            endpoint: Some("http://127.0.0.1:4443".into()),
            service_account_key: None,
        };
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.contains(r#""backend":"gcs""#), "{json}");
        assert_eq!(serde_json::from_str::<BackendSpec>(&json).unwrap(), spec);
    }
}
