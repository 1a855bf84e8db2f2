//! stratusfs itself as the tests run it: the `stratusfs` program of this build, a metadata
//! server process with volumes and tokens, and real FUSE mounts in their own processes.
//!
//! A [`Mount`] is unmounted when dropped (SIGTERM, then a lazy unmount if the process is gone), so
//! no test leaves a mount behind, panics included.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fs_core::admin::{TokenScope, VolumeSpec};
use fs_core::{AdminClient, BackendSpec, ClientTrust};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::service::{Service, free_port};
use crate::{HarnessError, Result};

/// The `stratusfs` program of this build: `target/debug/stratusfs` beside the running test
/// (`$STRATUSFS_BIN` overrides). `cargo test --workspace` and `e2e/test` build it.
pub fn binary() -> Result<PathBuf> {
    program("stratusfs", "STRATUSFS_BIN", "fs-core")
}

/// The `stratusfs-operator` program of this build (`$STRATUSFS_OPERATOR_BIN` overrides).
pub fn operator_binary() -> Result<PathBuf> {
    program("stratusfs-operator", "STRATUSFS_OPERATOR_BIN", "stratusfs-operator")
}

/// The `stratusfs-csi` program of this build (`$STRATUSFS_CSI_BIN` overrides).
pub fn csi_binary() -> Result<PathBuf> {
    program("stratusfs-csi", "STRATUSFS_CSI_BIN", "stratusfs-csi")
}

/// `stratusfs-csi-next` (e2e/src/bin): the CSI driver built as another executable, for a rollout
/// that switches binaries.
pub fn csi_next_binary() -> Result<PathBuf> {
    program("stratusfs-csi-next", "STRATUSFS_CSI_NEXT_BIN", "e2e")
}

/// Program `name` built beside the running test, or the path in `$var`.
fn program(name: &str, var: &str, package: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(HarnessError::io("finding the test program"))?;
    // target/debug/deps/e2e-HASH → target/debug/NAME
    let bin = exe.parent().and_then(Path::parent).map(|d| d.join(name));
    match bin {
        Some(b) if b.is_file() => Ok(b),
        _ => Err(HarnessError::setup(
            format!("finding the {name} program"),
            format!("not built beside the tests: run `cargo build -p {package}` (e2e/test does)"),
        )),
    }
}

/// The mount(8) helpers (`/sbin/mount.stratusfs`, `/sbin/mount.fuse.stratusfs`) pointing at this
/// build, for tests of `mount -t`, fstab-style mounts and `mount -o remount`.
pub fn install_mount_helpers() -> Result<()> {
    let out = Command::new(binary()?)
        .arg("install-helpers")
        .output()
        .map_err(HarnessError::io("running stratusfs install-helpers"))?;
    if !out.status.success() {
        return Err(HarnessError::setup("installing the mount helpers", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}

/// A metadata server (`stratusfs meta`) in its own process, on free ports, with its data in a
/// temporary directory and volumes on a local-folder block store there.
pub struct MetaServer {
    pub addr: String,
    pub http_addr: String,
    pub fingerprint: String,
    pub admin_token: String,
    dir: TempDir,
    extra: Vec<String>,
    service: Option<Service>,
}

impl MetaServer {
    /// Starts a server with its data on the machine's disk; `extra` are more `stratusfs meta`
    /// flags (`--sync`, `--lease-secs 3`).
    pub async fn start(extra: &[&str]) -> Result<MetaServer> {
        Self::start_in(&std::env::temp_dir(), extra).await
    }

    /// Starts a server with its data under `base` (`/dev/shm` for tests that do thousands of
    /// fsyncs and are about semantics, not the disk).
    pub async fn start_in(base: &Path, extra: &[&str]) -> Result<MetaServer> {
        let dir = tempfile::Builder::new()
            .prefix("stratusfs-meta-")
            .tempdir_in(base)
            .map_err(HarnessError::io("creating the metadata server's directory"))?;
        let admin_token = uuid::Uuid::new_v4().to_string();
        std::fs::write(dir.path().join("admin.token"), &admin_token)
            .map_err(HarnessError::io("writing the admin token"))?;
        let mut m = MetaServer {
            addr: format!("127.0.0.1:{}", free_port()?),
            http_addr: format!("127.0.0.1:{}", free_port()?),
            fingerprint: String::new(),
            admin_token,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            service: None,
        };
        m.spawn().await?;
        Ok(m)
    }

    async fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new(binary()?);
        cmd.arg("meta")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen", &self.addr, "--http-listen", &self.http_addr])
            .arg("--admin-token-file")
            .arg(self.dir.path().join("admin.token"))
            .args(&self.extra)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()));
        let mut service = Service::spawn("stratusfs-meta", cmd, self.dir.path())?;
        let log = service.log_path().to_path_buf();
        let fingerprint = std::sync::Mutex::new(String::new());
        service
            .wait_ready(Duration::from_secs(30), || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let found = text.lines().rev().find_map(|l| {
                    l.split("(TLS, fingerprint ").nth(1).map(|r| r.split(')').next().unwrap_or("").to_string())
                });
                if let Some(f) = &found {
                    *fingerprint.lock().expect("not poisoned") = f.clone();
                }
                async move { found.map(drop).ok_or_else(|| "no `listening` line yet".to_string()) }
            })
            .await?;
        self.fingerprint = fingerprint.into_inner().expect("not poisoned");
        self.service = Some(service);
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where volumes made by [`MetaServer::volume`] keep their blocks.
    pub fn blocks_dir(&self) -> PathBuf {
        self.dir.path().join("blocks")
    }

    pub fn trust(&self) -> ClientTrust {
        ClientTrust { ca_file: None, fingerprint: Some(self.fingerprint.clone()), ..Default::default() }
    }

    pub async fn admin(&self) -> Result<AdminClient> {
        AdminClient::connect(&self.addr, &self.trust(), &self.admin_token)
            .await
            .map_err(|e| HarnessError::setup("an admin client of the metadata server", e))
    }

    /// Creates a volume on the local-folder block store (`tweak` sets block size, compression,
    /// quota) and a full-access token; returns the token.
    pub async fn volume(&self, name: &str, tweak: impl FnOnce(&mut VolumeSpec)) -> Result<String> {
        self.volume_on(name, BackendSpec::Local { path: self.blocks_dir(), prefix: String::new() }, tweak).await
    }

    /// [`MetaServer::volume`] on the block store `backend`.
    pub async fn volume_on(
        &self,
        name: &str,
        backend: BackendSpec,
        tweak: impl FnOnce(&mut VolumeSpec),
    ) -> Result<String> {
        let mut spec = VolumeSpec::new(name, backend);
        tweak(&mut spec);
        let mut admin = self.admin().await?;
        admin.create_volume(&spec).await.map_err(|e| HarnessError::setup("creating a volume", e))?;
        self.token(name, |_| {}).await
    }

    /// A volume token (`tweak`: subpath, read-only, root squash).
    pub async fn token(&self, volume: &str, tweak: impl FnOnce(&mut TokenScope)) -> Result<String> {
        let mut scope = TokenScope::default();
        tweak(&mut scope);
        let mut admin = self.admin().await?;
        Ok(admin.create_token(volume, &scope).await.map_err(|e| HarnessError::setup("creating a token", e))?.token)
    }

    /// Writes `token` to a file a mount can be given.
    pub fn token_file(&self, token: &str) -> Result<PathBuf> {
        let p = self.dir.path().join(format!("{}.token", &token[..8.min(token.len())]));
        std::fs::write(&p, token).map_err(HarnessError::io("writing a token file"))?;
        Ok(p)
    }

    /// The server's Prometheus text.
    pub async fn metrics(&self) -> Result<String> {
        let url = format!("http://{}/metrics", self.http_addr);
        let r = crate::service::http_client().get(&url).send().await.map_err(|e| HarnessError::setup(&url, e))?;
        r.text().await.map_err(|e| HarnessError::setup(&url, e))
    }

    /// SIGKILL: the server dies at an arbitrary instant.
    pub fn kill9(&mut self) {
        if let Some(s) = &self.service {
            let _ = kill(Pid::from_raw(s.pid() as i32), Signal::SIGKILL);
        }
        self.service = None;
    }

    /// Starts the server again on the same data and ports (after [`MetaServer::kill9`]).
    pub async fn restart(&mut self) -> Result<()> {
        self.kill9();
        self.spawn().await
    }

    pub fn log_tail(&self, n: usize) -> String {
        self.service.as_ref().map_or_else(String::new, |s| s.log_tail(n))
    }
}

/// Whether `path` is a mount point now (per /proc/mounts).
pub fn is_mounted(path: &Path) -> bool {
    let p = path.to_string_lossy();
    std::fs::read_to_string("/proc/mounts").unwrap_or_default().lines().any(|l| l.split(' ').nth(1) == Some(&*p))
}

/// A volume mounted by `stratusfs mount --foreground` in its own process.
pub struct Mount {
    pub path: PathBuf,
    service: Option<Service>,
    /// The mount's log (kept after it stopped).
    log: PathBuf,
    _dir: TempDir,
}

impl Mount {
    /// Mounts `VOLUME[/SUBPATH]` with `token`; `options` are `-o` options (allow_other is
    /// always added: pjdfstest and other users reach the mount).
    pub async fn start(meta: &MetaServer, volume: &str, token: &str, options: &[&str]) -> Result<Mount> {
        Mount::start_at(meta, &meta.addr, volume, token, options).await
    }

    /// [`Mount::start`] through `server` (`HOST:PORT`; a proxy in front of `meta`).
    pub async fn start_at(
        meta: &MetaServer,
        server: &str,
        volume: &str,
        token: &str,
        options: &[&str],
    ) -> Result<Mount> {
        Mount::start_trusting(server, volume, token, &meta.fingerprint, options).await
    }

    /// [`Mount::start`] of a server at `server` (`HOST:PORT`) whose certificate has SHA-256
    /// `fingerprint` (a metadata server the operator runs, reached through a mapped port).
    pub async fn start_trusting(
        server: &str,
        volume: &str,
        token: &str,
        fingerprint: &str,
        options: &[&str],
    ) -> Result<Mount> {
        let dir =
            tempfile::Builder::new().prefix("stratusfs-mount-").tempdir().map_err(HarnessError::io("a mount dir"))?;
        // Other users (pjdfstest's, ACL tests') must reach the mount point.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(HarnessError::io("opening the mount dir to other users"))?;
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).map_err(HarnessError::io("creating a mount point"))?;
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, token).map_err(HarnessError::io("writing the token"))?;
        let mut opts = vec!["allow_other".to_string()];
        opts.extend(options.iter().map(|s| s.to_string()));
        let mut cmd = Command::new(binary()?);
        cmd.arg("mount")
            .arg(format!("stratusfs://{server}/{volume}"))
            .arg(&path)
            .arg("--foreground")
            .arg("--token-file")
            .arg(&token_file)
            .args(["--fingerprint", fingerprint])
            .arg("-o")
            .arg(opts.join(","))
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()));
        let mut service = Service::spawn("stratusfs-mount", cmd, dir.path())?;
        let p = path.clone();
        service
            .wait_ready(Duration::from_secs(30), || {
                let ok = is_mounted(&p) && std::fs::metadata(&p).is_ok();
                async move { if ok { Ok(()) } else { Err("not mounted yet".to_string()) } }
            })
            .await?;
        let log = service.log_path().to_path_buf();
        Ok(Mount { path, service: Some(service), log, _dir: dir })
    }

    pub fn pid(&self) -> u32 {
        self.service.as_ref().map_or(0, |s| s.pid())
    }

    /// The mount's log file (kept after it stopped).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `n` lines of the mount's log (also after it stopped).
    pub fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGKILL of the mount process (a crashed client); the dead mount is detached.
    pub fn kill9(&mut self) {
        if let Some(s) = self.service.take() {
            let _ = kill(Pid::from_raw(s.pid() as i32), Signal::SIGKILL);
            drop(s);
        }
        detach(&self.path);
    }

    /// Unmounts the way a user stops a mount (SIGTERM) and waits for the process to end.
    pub fn stop(&mut self) {
        if let Some(s) = self.service.take() {
            let _ = kill(Pid::from_raw(s.pid() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && std::path::Path::new(&format!("/proc/{}/stat", s.pid())).exists() {
                let stat = std::fs::read_to_string(format!("/proc/{}/stat", s.pid())).unwrap_or_default();
                if stat.contains(") Z ") {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            drop(s);
        }
        detach(&self.path);
    }
}

/// Lazily unmounts `path` if it is still mounted (a dead FUSE daemon leaves it so).
fn detach(path: &Path) {
    if is_mounted(path) {
        let _ = Command::new("umount").arg("-l").arg(path).status();
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // The service prints its log when a panic unwinds.
        self.stop();
    }
}

/// Ends the FUSE connection of the mount on `mountpoint` (fusectl's `abort`): every request
/// waiting on it fails with ENOTCONN. For a test whose own process serves a mount (or freezes
/// its server) and must not hang closing files on it while a panic unwinds. Found through
/// /proc/self/mountinfo, without touching the mount.
pub fn abort_fuse_connection(mountpoint: &Path) {
    let want = mountpoint.to_string_lossy();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let Some(dev) = info.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(4) == Some(&&*want)).then(|| f.get(2).map(|d| d.to_string())).flatten()
    }) else {
        return;
    };
    let Some((_, minor)) = dev.split_once(':') else { return };
    let ctl = Path::new("/sys/fs/fuse/connections");
    if !ctl.join(minor).exists() {
        let _ = Command::new("mount").args(["-t", "fusectl", "none"]).arg(ctl).status();
    }
    let _ = std::fs::write(ctl.join(minor).join("abort"), "1");
}

/// Aborts the FUSE connection of a mount if a panic unwinds past it (see
/// [`abort_fuse_connection`]); does nothing otherwise.
pub struct AbortOnPanic(pub PathBuf);

impl Drop for AbortOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            abort_fuse_connection(&self.0);
        }
    }
}
