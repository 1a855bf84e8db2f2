//! fake-gcs-server: a Google Cloud Storage emulator with one bucket.

use std::process::Command;
use std::time::Duration;

use fs_core::BackendSpec;
use tempfile::TempDir;

use crate::service::{Service, free_port, http_client, http_ok};
use crate::{HarnessError, Result, tools};

pub struct FakeGcs {
    /// `http://127.0.0.1:PORT`, the JSON API's base URL.
    pub endpoint: String,
    /// Created at start-up and empty.
    pub bucket: String,
    service: Service,
    _dir: TempDir,
}

impl FakeGcs {
    pub async fn start() -> Result<FakeGcs> {
        let dir = tempfile::Builder::new()
            .prefix("stratusfs-gcs-")
            .tempdir()
            .map_err(HarnessError::io("creating fake-gcs-server's directory"))?;
        let port = free_port()?;
        let endpoint = format!("http://127.0.0.1:{port}");
        let mut cmd = Command::new(tools::binary("fake-gcs-server")?);
        cmd.args(["-scheme", "http", "-host", "127.0.0.1", "-backend", "memory"])
            .args(["-port", &port.to_string()])
            .args(["-public-host", &format!("127.0.0.1:{port}")])
            .args(["-external-url", &endpoint])
            .args(["-log-level", "warn"]);
        let mut service = Service::spawn("fake-gcs-server", cmd, dir.path())?;
        let http = http_client();
        let list = format!("{endpoint}/storage/v1/b");
        service.wait_ready(Duration::from_secs(30), || http_ok(&http, &list)).await?;
        let gcs = FakeGcs { endpoint, bucket: "stratusfs".into(), service, _dir: dir };
        gcs.create_bucket(&gcs.bucket).await?;
        Ok(gcs)
    }

    /// Creates a bucket through the JSON API (the emulator needs no credentials).
    pub async fn create_bucket(&self, bucket: &str) -> Result<()> {
        let what = format!("creating fake-gcs-server bucket {bucket}");
        let resp = http_client()
            .post(format!("{}/storage/v1/b?project=stratusfs", self.endpoint))
            .json(&serde_json::json!({ "name": bucket }))
            .send()
            .await
            .map_err(|e| HarnessError::setup(&what, e))?;
        if !resp.status().is_success() {
            let status = resp.status();
            return Err(HarnessError::setup(what, format!("{status}: {}", resp.text().await.unwrap_or_default())));
        }
        Ok(())
    }

    /// The block-store spec of this bucket, under `prefix`.
    pub fn backend_spec(&self, prefix: &str) -> BackendSpec {
        BackendSpec::Gcs {
            bucket: self.bucket.clone(),
            prefix: prefix.to_string(),
            endpoint: Some(self.endpoint.clone()),
            service_account_key: None,
        }
    }

    /// The environment `--block-store gs://BUCKET/PREFIX` reads for this emulator.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![("STORAGE_EMULATOR_HOST", self.endpoint.clone())]
    }

    pub fn service(&self) -> &Service {
        &self.service
    }
}
