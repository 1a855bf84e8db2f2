//! The CSI driver (`stratusfs-csi`) as a process on a Unix socket, and a gRPC client of it, as
//! kubelet and the sidecars reach it. Its state directory and the targets tests publish into
//! live in one temporary directory; whatever is still mounted there when the fixture goes (a
//! killed node plugin leaves stale FUSE mounts) is detached, so no test leaves a mount behind.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use stratusfs_csi::csi::controller_client::ControllerClient;
use stratusfs_csi::csi::identity_client::IdentityClient;
use stratusfs_csi::csi::node_client::NodeClient;
use tempfile::TempDir;
use tonic::transport::Channel;

use crate::service::Service;
use crate::{HarnessError, Result};

/// A running `stratusfs-csi`.
pub struct Driver {
    pub socket: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    service: Option<Service>,
    dir: TempDir,
}

impl Driver {
    /// Starts `stratusfs-csi` with `args` (`--node`, `--controller`, `--service-address ...`) and
    /// `env` (`KUBECONFIG`); its socket, state directory (`state/`) and node id (`e2e-node`) are
    /// set here.
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> Result<Driver> {
        let dir =
            tempfile::Builder::new().prefix("stratusfs-csi-").tempdir().map_err(HarnessError::io("a driver dir"))?;
        let socket = dir.path().join("csi.sock");
        let mut all: Vec<String> = vec![
            format!("--endpoint=unix://{}", socket.display()),
            format!("--state-dir={}", dir.path().join("state").display()),
            "--node-id=e2e-node".into(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut d = Driver { socket, args: all, env, service: None, dir };
        d.spawn().await?;
        Ok(d)
    }

    async fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new(crate::stratusfs::csi_binary()?);
        cmd.args(&self.args).envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()));
        let mut service = Service::spawn("stratusfs-csi", cmd, self.dir.path())?;
        let socket = self.socket.clone();
        service
            .wait_ready(Duration::from_secs(30), || {
                let socket = socket.clone();
                async move {
                    match stratusfs_csi::server::connect(&socket).await {
                        Ok(c) => IdentityClient::new(c)
                            .probe(stratusfs_csi::csi::ProbeRequest {})
                            .await
                            .map(drop)
                            .map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                }
            })
            .await?;
        self.service = Some(service);
        Ok(())
    }

    /// A directory for targets, kept with the driver's (cleaned up with it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.service.as_ref().map_or(0, |s| s.pid())
    }

    pub fn log_tail(&self, n: usize) -> String {
        self.service.as_ref().map(|s| s.log_tail(n)).unwrap_or_default()
    }

    /// Kills the process (SIGKILL): its sessions end with it, their mounts go stale.
    pub fn kill9(&mut self) {
        self.service = None;
    }

    /// Starts the process again with the same arguments (a node plugin restarted by kubelet).
    pub async fn restart(&mut self) -> Result<()> {
        self.service = None;
        self.spawn().await
    }

    pub async fn channel(&self) -> Result<Channel> {
        stratusfs_csi::server::connect(&self.socket)
            .await
            .map_err(|e| HarnessError::setup("connecting to the driver", e))
    }

    pub async fn node(&self) -> Result<NodeClient<Channel>> {
        Ok(NodeClient::new(self.channel().await?))
    }

    pub async fn controller(&self) -> Result<ControllerClient<Channel>> {
        Ok(ControllerClient::new(self.channel().await?))
    }
}

/// Mount points at or under `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let prefix = dir.to_string_lossy().to_string();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| *p == prefix || p.starts_with(&format!("{prefix}/")))
        .map(PathBuf::from)
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.service = None;
        for m in mounts_under(self.dir.path()) {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}
