//! MinIO: a real S3 server with one bucket.

use std::process::Command;
use std::time::Duration;

use fs_core::BackendSpec;
use tempfile::TempDir;

use crate::service::{Service, free_port, http_client, http_ok};
use crate::{HarnessError, Result, sign, tools};

pub struct Minio {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
    /// Created at start-up and empty.
    pub bucket: String,
    /// `None` while stopped ([`Minio::stop`]).
    service: Option<Service>,
    ports: (u16, u16),
    /// The KMS key the server encrypts with (`MINIO_KMS_SECRET_KEY`), if started with one.
    kms_key: Option<String>,
    dir: TempDir,
}

/// The name of the static KMS key [`Minio::start_with_kms`] gives the server.
pub const KMS_KEY_NAME: &str = "stratusfs-key";

impl Minio {
    pub async fn start() -> Result<Minio> {
        Minio::start_with(None).await
    }

    /// A MinIO with a static KMS key named [`KMS_KEY_NAME`], so that it honours SSE-S3 and
    /// SSE-KMS requests (a MinIO without one refuses them).
    pub async fn start_with_kms() -> Result<Minio> {
        // 32 bytes of test key material, base64: "32bytesoftestkeymaterial12345678".
        Minio::start_with(Some(format!("{KMS_KEY_NAME}:MzJieXRlc29mdGVzdGtleW1hdGVyaWFsMTIzNDU2Nzg="))).await
    }

    async fn start_with(kms_key: Option<String>) -> Result<Minio> {
        let dir = tempfile::Builder::new()
            .prefix("stratusfs-minio-")
            .tempdir()
            .map_err(HarnessError::io("creating MinIO's directory"))?;
        let ports = (free_port()?, free_port()?);
        let mut minio = Minio {
            endpoint: format!("http://127.0.0.1:{}", ports.0),
            access_key: "stratusfs".to_string(),
            secret_key: format!("secret-{}", std::process::id()),
            region: "us-east-1".into(),
            bucket: "stratusfs".into(),
            service: None,
            ports,
            kms_key,
            dir,
        };
        minio.spawn().await?;
        minio.create_bucket(&minio.bucket).await?;
        Ok(minio)
    }

    /// Starts the server on this fixture's data and ports and waits until it answers.
    async fn spawn(&mut self) -> Result<()> {
        let (port, console) = self.ports;
        let mut cmd = Command::new(tools::binary("minio")?);
        cmd.arg("server")
            .arg(self.dir.path().join("data"))
            .args(["--address", &format!("127.0.0.1:{port}")])
            .args(["--console-address", &format!("127.0.0.1:{console}")])
            .env("MINIO_ROOT_USER", &self.access_key)
            .env("MINIO_ROOT_PASSWORD", &self.secret_key)
            .env("MINIO_BROWSER", "off")
            .env("MINIO_UPDATE", "off")
            .env("HOME", self.dir.path());
        if let Some(key) = &self.kms_key {
            cmd.env("MINIO_KMS_SECRET_KEY", key);
        }
        let mut service = Service::spawn("minio", cmd, self.dir.path())?;
        let http = http_client();
        let live = format!("{}/minio/health/ready", self.endpoint);
        service.wait_ready(Duration::from_secs(60), || http_ok(&http, &live)).await?;
        self.service = Some(service);
        Ok(())
    }

    /// Kills the server (SIGKILL): its port refuses connections until [`Minio::restart`].
    pub fn stop(&mut self) {
        self.service = None;
    }

    /// Starts the server again on the same data and port.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn().await
    }

    /// Creates a bucket (S3 CreateBucket, SigV4-signed with the root credentials). MinIO can
    /// report itself ready and still answer 503 "Server not initialized yet" for a moment on a
    /// loaded machine: that answer is retried for up to 30 s.
    pub async fn create_bucket(&self, bucket: &str) -> Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match self.try_create_bucket(bucket).await {
                Err(HarnessError::Setup { message, .. })
                    if message.contains("XMinioServerNotInitialized") && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                r => return r,
            }
        }
    }

    async fn try_create_bucket(&self, bucket: &str) -> Result<()> {
        let doing = format!("creating MinIO bucket {bucket}");
        let resp =
            self.signed("PUT", &format!("/{bucket}")).send().await.map_err(|e| HarnessError::setup(&doing, e))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            return Err(HarnessError::setup(doing, format!("{status}: {body}")));
        }
        Ok(())
    }

    /// The headers MinIO answers a HEAD of `key` in the bucket with (what a user's `aws s3api
    /// head-object` shows: size, ETag, `x-amz-server-side-encryption`, ...).
    pub async fn head(&self, key: &str) -> Result<reqwest::header::HeaderMap> {
        let doing = format!("HEAD of {key} in MinIO bucket {}", self.bucket);
        let resp = self
            .signed("HEAD", &format!("/{}/{key}", self.bucket))
            .send()
            .await
            .map_err(|e| HarnessError::setup(&doing, e))?;
        if !resp.status().is_success() {
            return Err(HarnessError::setup(doing, resp.status()));
        }
        Ok(resp.headers().clone())
    }

    /// A bodiless request to `path` (path-style), SigV4-signed with the root credentials.
    fn signed(&self, method: &str, path: &str) -> reqwest::RequestBuilder {
        let host = self.endpoint.trim_start_matches("http://");
        let headers = sign::sigv4_headers(
            method,
            host,
            path,
            &self.region,
            &self.access_key,
            &self.secret_key,
            chrono::Utc::now(),
        );
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
        let mut req = http_client().request(method, format!("{}{path}", self.endpoint));
        for (name, value) in headers {
            req = req.header(name, value);
        }
        req
    }

    /// The block-store spec of this bucket, under `prefix`.
    pub fn backend_spec(&self, prefix: &str) -> BackendSpec {
        BackendSpec::S3 {
            bucket: self.bucket.clone(),
            prefix: prefix.to_string(),
            endpoint: Some(self.endpoint.clone()),
            region: Some(self.region.clone()),
            access_key_id: Some(self.access_key.clone()),
            secret_access_key: Some(self.secret_key.clone()),
            session_token: None,
            virtual_hosted_style: false,
            server_side_encryption: None,
        }
    }

    /// The environment `--block-store s3://BUCKET/PREFIX` reads for this MinIO.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", self.region.clone()),
        ]
    }

    /// The running server (panics while stopped).
    pub fn service(&self) -> &Service {
        self.service.as_ref().expect("MinIO is stopped")
    }
}
