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
    /// The executable (`stratusfs-csi`, or another build a rollout switched to).
    program: PathBuf,
    /// Processes started so far (each logs to `stratusfs-csi.N.log`).
    generation: usize,
    args: Vec<String>,
    env: Vec<(String, String)>,
    service: Option<Service>,
    /// The fd holder (`stratusfs-csi --fd-holder`), when the test runs one.
    holder: Option<Service>,
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
        let program = crate::stratusfs::csi_binary()?;
        let mut d = Driver { socket, program, generation: 0, args: all, env, service: None, holder: None, dir };
        d.spawn().await?;
        Ok(d)
    }

    /// Starts one more process of the driver with the same arguments.
    pub fn spawn_process(&mut self, program: &Path) -> Result<Service> {
        self.generation += 1;
        let mut cmd = Command::new(program);
        cmd.args(&self.args).envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()));
        Service::spawn(&format!("stratusfs-csi.{}", self.generation), cmd, self.dir.path())
    }

    async fn spawn(&mut self) -> Result<()> {
        let program = self.program.clone();
        let mut service = self.spawn_process(&program)?;
        self.ready(&mut service).await?;
        self.service = Some(service);
        Ok(())
    }

    /// Waits until `service` answers Probe on the socket.
    async fn ready(&self, service: &mut Service) -> Result<()> {
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
            .await
    }

    /// A rollout of the node plugin as a DaemonSet with `maxSurge: 1` makes it: a successor
    /// (`program`, or the same executable) starts while this one runs and takes its sessions
    /// over; once it serves, the predecessor gets SIGTERM (the DaemonSet removing the old pod)
    /// and must exit 0. Returns the time from the successor's start until it served. A successor
    /// that exits first (it refused the handover) is an error naming its log.
    pub async fn roll(&mut self, program: Option<&Path>) -> Result<Duration> {
        if let Some(p) = program {
            self.program = p.to_path_buf();
        }
        let program = self.program.clone();
        let mut successor = self.spawn_process(&program)?;
        let took = Self::serving(&mut successor, Duration::from_secs(60)).await?;
        if let Some(mut old) = self.service.take() {
            match old.terminate(Duration::from_secs(10)) {
                Some(s) if s.success() => {}
                other => {
                    return Err(HarnessError::setup(
                        "a rollout",
                        format!("the predecessor ended with {other:?} after SIGTERM:\n{}", old.log_tail(40)),
                    ));
                }
            }
        }
        self.ready(&mut successor).await?;
        self.service = Some(successor);
        Ok(took)
    }

    /// Waits until `service` logs that it serves the socket (a successor does once it took the
    /// sessions over); the time it took.
    pub async fn serving(service: &mut Service, within: Duration) -> Result<Duration> {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = service.try_exit() {
                return Err(HarnessError::Exited {
                    service: service.name().to_string(),
                    status,
                    log: service.log_path().to_path_buf(),
                    tail: service.log_tail(40),
                });
            }
            if service.logged("stratusfs-csi serving") {
                return Ok(start.elapsed());
            }
            if start.elapsed() > within {
                return Err(HarnessError::setup(
                    "a rollout",
                    format!("{} did not serve within {within:?}:\n{}", service.name(), service.log_tail(40)),
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The running process, taken out of the fixture (a test that rolls by hand).
    pub fn take_process(&mut self) -> Option<Service> {
        self.service.take()
    }

    /// The running process's exit status, if it exited.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.service.as_mut().and_then(|s| s.try_exit())
    }

    /// Takes another process of the driver as the one this fixture runs (a test that started
    /// successors itself).
    pub fn replace(&mut self, service: Service) {
        self.service = Some(service);
    }

    /// Starts the fd holder on the driver's state directory, as the node pod's `fd-holder`
    /// container runs beside the plugin (start it before publishing: the plugin gives it each
    /// session as it publishes).
    pub async fn start_holder(&mut self) -> Result<()> {
        let state = self.dir.path().join("state");
        let mut cmd = Command::new(&self.program);
        cmd.arg("--fd-holder").arg(format!("--state-dir={}", state.display()));
        cmd.env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()));
        let mut holder = Service::spawn("fd-holder", cmd, self.dir.path())?;
        let socket = state.join("holder.sock");
        holder
            .wait_ready(Duration::from_secs(10), || {
                let socket = socket.clone();
                async move { std::os::unix::net::UnixStream::connect(&socket).map(drop).map_err(|e| e.to_string()) }
            })
            .await?;
        self.holder = Some(holder);
        Ok(())
    }

    /// A directory for targets, kept with the driver's (cleaned up with it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.service.as_ref().map_or(0, |s| s.pid())
    }

    /// The fd holder's pid (0: none runs).
    pub fn holder_pid(&self) -> u32 {
        self.holder.as_ref().map_or(0, |s| s.pid())
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
        if std::thread::panicking() {
            // The processes a test killed or rolled away: what each said last (the running one
            // and the holder print their own).
            for n in 1..self.generation {
                let log = self.dir.path().join(format!("stratusfs-csi.{n}.log"));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(15)..].join("\n");
                eprintln!("----- stratusfs-csi.{n} (ended), last 15 lines -----\n{tail}");
            }
        }
        self.service = None;
        self.holder = None;
        for m in mounts_under(self.dir.path()) {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}
