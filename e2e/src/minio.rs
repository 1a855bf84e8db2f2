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
    service: Service,
    _dir: TempDir,
}

impl Minio {
    pub async fn start() -> Result<Minio> {
        let dir = tempfile::Builder::new()
            .prefix("stratusfs-minio-")
            .tempdir()
            .map_err(HarnessError::io("creating MinIO's directory"))?;
        let (port, console) = (free_port()?, free_port()?);
        let access_key = "stratusfs".to_string();
        let secret_key = format!("secret-{}", std::process::id());
        let mut cmd = Command::new(tools::binary("minio")?);
        cmd.arg("server")
            .arg(dir.path().join("data"))
            .args(["--address", &format!("127.0.0.1:{port}")])
            .args(["--console-address", &format!("127.0.0.1:{console}")])
            .env("MINIO_ROOT_USER", &access_key)
            .env("MINIO_ROOT_PASSWORD", &secret_key)
            .env("MINIO_BROWSER", "off")
            .env("MINIO_UPDATE", "off")
            .env("HOME", dir.path());
        let mut service = Service::spawn("minio", cmd, dir.path())?;
        let endpoint = format!("http://127.0.0.1:{port}");
        let http = http_client();
        let live = format!("{endpoint}/minio/health/ready");
        service.wait_ready(Duration::from_secs(60), || http_ok(&http, &live)).await?;
        let minio = Minio {
            endpoint,
            access_key,
            secret_key,
            region: "us-east-1".into(),
            bucket: "stratusfs".into(),
            service,
            _dir: dir,
        };
        minio.create_bucket(&minio.bucket).await?;
        Ok(minio)
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
        let host = self.endpoint.trim_start_matches("http://");
        let path = format!("/{bucket}");
        let headers = sign::sigv4_headers(
            "PUT",
            host,
            &path,
            &self.region,
            &self.access_key,
            &self.secret_key,
            chrono::Utc::now(),
        );
        let mut req = http_client().put(format!("{}{path}", self.endpoint));
        for (name, value) in headers {
            req = req.header(name, value);
        }
        let resp = req.send().await.map_err(|e| HarnessError::setup(format!("creating MinIO bucket {bucket}"), e))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            return Err(HarnessError::setup(format!("creating MinIO bucket {bucket}"), format!("{status}: {body}")));
        }
        Ok(())
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

    pub fn service(&self) -> &Service {
        &self.service
    }
}
