//! Azurite: the Azure Blob Storage emulator with one container.

use std::process::Command;
use std::time::Duration;

use fs_core::BackendSpec;
use tempfile::TempDir;

use crate::service::{Service, free_port, http_client};
use crate::{HarnessError, Result, sign, tools};

/// Azurite's well-known development account and key (public, documented by Microsoft).
pub use fs_core::blockstore::{AZURITE_ACCOUNT as ACCOUNT, AZURITE_KEY as ACCOUNT_KEY};

pub struct Azurite {
    /// The account URL, `http://127.0.0.1:PORT/devstoreaccount1`.
    pub endpoint: String,
    pub account: String,
    pub account_key: String,
    /// Created at start-up and empty.
    pub container: String,
    service: Service,
    _dir: TempDir,
}

impl Azurite {
    pub async fn start() -> Result<Azurite> {
        let dir = tempfile::Builder::new()
            .prefix("stratusfs-azurite-")
            .tempdir()
            .map_err(HarnessError::io("creating Azurite's directory"))?;
        let port = free_port()?;
        let mut cmd = Command::new(tools::binary_of("azurite", "azurite-blob")?);
        cmd.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .args(["--inMemoryPersistence", "--disableTelemetry", "--skipApiVersionCheck"])
            .current_dir(dir.path());
        let mut service = Service::spawn("azurite", cmd, dir.path())?;
        let endpoint = format!("http://127.0.0.1:{port}/{ACCOUNT}");
        let container = "stratusfs".to_string();
        // Ready means: the first container can be created.
        service
            .wait_ready(Duration::from_secs(60), || async {
                create_container(&endpoint, ACCOUNT, ACCOUNT_KEY, &container).await.map_err(|e| e.to_string())
            })
            .await?;
        Ok(Azurite {
            endpoint,
            account: ACCOUNT.into(),
            account_key: ACCOUNT_KEY.into(),
            container,
            service,
            _dir: dir,
        })
    }

    /// Creates another container.
    pub async fn create_container(&self, container: &str) -> Result<()> {
        create_container(&self.endpoint, &self.account, &self.account_key, container).await
    }

    /// The block-store spec of this container, under `prefix`.
    pub fn backend_spec(&self, prefix: &str) -> BackendSpec {
        BackendSpec::Azure {
            account: self.account.clone(),
            container: self.container.clone(),
            prefix: prefix.to_string(),
            endpoint: Some(self.endpoint.clone()),
            access_key: Some(self.account_key.clone()),
        }
    }

    /// The environment `--block-store az://CONTAINER/PREFIX` reads for this Azurite.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_STORAGE_ACCOUNT_NAME", self.account.clone()),
            ("AZURE_STORAGE_ACCOUNT_KEY", self.account_key.clone()),
            ("AZURE_STORAGE_ENDPOINT", self.endpoint.clone()),
        ]
    }

    pub fn service(&self) -> &Service {
        &self.service
    }
}

/// Create Container, Shared-Key-signed with the account key; `endpoint` is the account URL.
async fn create_container(endpoint: &str, account: &str, key: &str, container: &str) -> Result<()> {
    let what = format!("creating Azurite container {container}");
    let resource = format!("/{account}/{account}/{container}\nrestype:container");
    let headers = sign::azure_shared_key_headers("PUT", account, key, &resource, chrono::Utc::now())
        .map_err(|e| HarnessError::setup(&what, e))?;
    let mut req = http_client().put(format!("{endpoint}/{container}?restype=container")).header("content-length", "0");
    for (name, value) in headers {
        req = req.header(name, value);
    }
    let resp = req.send().await.map_err(|e| HarnessError::setup(&what, e))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        return Err(HarnessError::setup(what, format!("{status}: {body}")));
    }
    Ok(())
}
