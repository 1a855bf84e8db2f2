//! `stratusfs mount`: a volume on a directory through FUSE.
//!
//! The source is `stratusfs://HOST:PORT/VOLUME[/SUBPATH]` (the same for `stratusfs mount`,
//! `mount -t fuse.stratusfs`, fstab and CSI). SUBPATH, if given, becomes the mount's root (the
//! token's own subtree, if it has one, is the limit the server enforces). Options travel as mount
//! options (`-o`), parsed in one place ([`MountOptions::parse`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::client::{FsConfig, StratusFs};
use crate::fuse::abi::init;
use crate::fuse::adapter::Adapter;
use crate::fuse::mount::{KernelOptions, mount, unmount};
use crate::fuse::session::{Channel, InitParams, InitWanted, Session as FuseSession, handshake};
use crate::meta::client::{Session, connect};
use crate::tls::ClientTrust;

/// A parsed `stratusfs://HOST:PORT/VOLUME[/SUBPATH]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub server: String,
    pub volume: String,
    pub subpath: String,
}

impl std::str::FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> Result<Source, String> {
        let rest = s
            .strip_prefix("stratusfs://")
            .ok_or_else(|| format!("{s:?}: a source looks like stratusfs://HOST:PORT/VOLUME[/SUBPATH]"))?;
        let (server, path) = rest
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: the volume is missing (stratusfs://HOST:PORT/VOLUME)"))?;
        if !server.contains(':') {
            return Err(format!("{s:?}: give the server's port (stratusfs://HOST:PORT/VOLUME)"));
        }
        let (volume, subpath) = path.split_once('/').unwrap_or((path, ""));
        if volume.is_empty() {
            return Err(format!("{s:?}: the volume is missing"));
        }
        Ok(Source { server: server.into(), volume: volume.into(), subpath: subpath.trim_matches('/').into() })
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stratusfs://{}/{}", self.server, self.volume)?;
        if !self.subpath.is_empty() {
            write!(f, "/{}", self.subpath)?;
        }
        Ok(())
    }
}

/// Everything `-o` can say.
#[derive(Clone, Debug, Default)]
pub struct MountOptions {
    pub kernel: KernelOptions,
    pub fs: FsConfig,
    pub threads: usize,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub fingerprint: Option<String>,
    /// `remount`: change the flags (ro/rw) of an existing mount instead of mounting.
    pub remount: bool,
    /// Where a daemonised mount writes its log.
    pub log_file: Option<PathBuf>,
    /// How long requests wait for a metadata server that cannot be reached before failing with EIO.
    pub meta_wait: Duration,
}

/// The default of `meta_wait`: longer than a metadata server's restart or a pod's rescheduling.
pub const META_WAIT: Duration = Duration::from_secs(60);

/// The options `-o` knows, for the error message.
const KNOWN: &str = "ro, rw, allow_other, noatime, noexec, nosuid, nodev, umask=OCTAL, attr_ttl=SECS, \
entry_ttl=SECS, cache_mib=N, threads=N, meta_wait=SECS, nodelegations, token_file=PATH, ca_file=PATH, fingerprint=HEX, \
log_file=PATH";

impl MountOptions {
    /// Parses comma-separated mount options (several `-o` allowed). Options mount(8) and fstab
    /// add for their own use (defaults, auto, _netdev, ...) are accepted and ignored.
    pub fn parse(opts: &[String]) -> Result<MountOptions, String> {
        let mut o = MountOptions {
            kernel: KernelOptions { nodev: true, ..Default::default() },
            threads: 4,
            meta_wait: META_WAIT,
            ..Default::default()
        };
        for opt in opts.iter().flat_map(|s| s.split(',')).map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = opt.split_once('=').unwrap_or((opt, ""));
            let secs = |v: &str| -> Result<Duration, String> {
                v.parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| format!("mount option {opt}: give seconds, e.g. {k}=1.5"))
            };
            let num = |v: &str| -> Result<usize, String> {
                v.parse::<usize>().map_err(|_| format!("mount option {opt}: give a whole number"))
            };
            let path = |v: &str| -> Result<Option<PathBuf>, String> {
                if v.is_empty() { Err(format!("mount option {k}= needs a path")) } else { Ok(Some(PathBuf::from(v))) }
            };
            match k {
                "ro" => o.kernel.read_only = true,
                "rw" => o.kernel.read_only = false,
                "remount" => o.remount = true,
                "defaults"
                | "_netdev"
                | "auto"
                | "noauto"
                | "nofail"
                | "user"
                | "nouser"
                | "users"
                | "owner"
                | "relatime"
                | "atime"
                | "exec"
                | "suid"
                | "x-systemd.automount" => {}
                // What /proc/mounts shows for a FUSE mount; mount(8) passes it back on a remount.
                "user_id"
                | "group_id"
                | "default_permissions"
                | "max_read"
                | "rootmode"
                | "blksize"
                | "nodiratime"
                | "diratime"
                | "lazytime"
                | "nolazytime"
                | "strictatime" => {}
                _ if k.starts_with("x-") || k.starts_with("comment") => {}
                "allow_other" => o.kernel.allow_other = true,
                "nodelegations" => o.fs.delegations = false,
                "delegations" => o.fs.delegations = true,
                "noatime" => o.kernel.noatime = true,
                "noexec" => o.kernel.noexec = true,
                "nosuid" => o.kernel.nosuid = true,
                "nodev" => o.kernel.nodev = true,
                "dev" => o.kernel.nodev = false,
                "umask" => {
                    o.fs.umask = u32::from_str_radix(v, 8)
                        .ok()
                        .filter(|m| *m <= 0o777)
                        .ok_or_else(|| format!("mount option {opt}: give octal permission bits, e.g. umask=022"))?
                }
                "attr_ttl" => o.fs.attr_ttl = secs(v)?,
                "entry_ttl" => o.fs.entry_ttl = secs(v)?,
                "cache_mib" => o.fs.cache_bytes = num(v)? << 20,
                "threads" => o.threads = num(v)?.clamp(1, 64),
                "meta_wait" => o.meta_wait = secs(v)?,
                "token_file" => o.token_file = path(v)?,
                "ca_file" => o.ca_file = path(v)?,
                "fingerprint" => o.fingerprint = Some(v.to_string()),
                "log_file" => o.log_file = path(v)?,
                other => return Err(format!("unknown mount option {other:?} (known: {KNOWN})")),
            }
        }
        Ok(o)
    }
}

#[derive(Clone, Debug)]
pub struct MountArgs {
    pub source: Source,
    pub mountpoint: PathBuf,
    pub token: String,
    pub trust: ClientTrust,
    pub options: MountOptions,
}

/// The capabilities a stratusfs mount asks the kernel for.
pub const WANTED_FLAGS: u64 = init::ASYNC_READ
    | init::POSIX_LOCKS
    | init::ATOMIC_O_TRUNC
    | init::BIG_WRITES
    | init::FLOCK_LOCKS
    | init::DO_READDIRPLUS
    | init::READDIRPLUS_AUTO
    | init::PARALLEL_DIROPS
    | init::MAX_PAGES
    | init::CACHE_SYMLINKS
    | init::POSIX_ACL
    // The umask is applied by us: not where a default ACL is inherited.
    | init::DONT_MASK
    | init::SETXATTR_EXT;

/// The largest write the kernel sends (and read it asks for).
pub const MAX_WRITE: u32 = 1 << 20;

/// What a mount needs to keep serving: the session with the metadata server, the filesystem on
/// it, and the FUSE connection with its negotiated parameters (all a successor process needs to
/// adopt the connection, see docs/mount.md).
pub struct Mounted {
    pub session: Arc<Session>,
    pub fs: Arc<StratusFs>,
    pub fuse: Arc<FuseSession>,
    pub params: InitParams,
    pub mountpoint: PathBuf,
    pub source: Source,
}

/// Connects, opens the session and mounts; the kernel is initialised when this returns.
pub async fn mount_volume(a: &MountArgs) -> anyhow::Result<Mounted> {
    let channel = connect(&a.source.server, &a.trust, a.options.meta_wait).await?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let client = format!("{}:{}", host.trim(), a.mountpoint.display());
    let session = Session::open(channel, &a.source.volume, &a.token, &client)
        .await
        .with_context(|| format!("opening a session on volume {:?} at {}", a.source.volume, a.source.server))?;
    let mut fs = StratusFs::new(session.clone(), a.options.fs.clone()).map_err(anyhow::Error::msg)?;
    if !a.source.subpath.is_empty() {
        fs.set_root_path(&a.source.subpath)
            .await
            .map_err(|e| anyhow::anyhow!("resolving the subpath {:?}: {e}", a.source.subpath))?;
    }
    let mut kernel = a.options.kernel.clone();
    kernel.max_read = MAX_WRITE;
    // A read-only token: the kernel refuses changes before they reach the server.
    kernel.read_only |= session.reply.read_only;
    let fd = mount(&a.mountpoint, &a.source.to_string(), "stratusfs", &kernel)?;
    let chan = Channel::from_fd(fd);
    let wanted = InitWanted { flags: WANTED_FLAGS, max_write: MAX_WRITE, max_readahead: MAX_WRITE };
    let (chan, params) = tokio::task::spawn_blocking(move || handshake(&chan, wanted).map(|p| (chan, p))).await??;
    Ok(Mounted {
        session,
        fs: Arc::new(fs),
        fuse: Arc::new(FuseSession::new(chan, params)),
        params,
        mountpoint: a.mountpoint.clone(),
        source: a.source.clone(),
    })
}

/// Mounts, calls `ready` once the kernel answers, serves until `shutdown` resolves (or the
/// filesystem is unmounted from outside), then unmounts and closes the session.
pub async fn run_mount(
    a: MountArgs,
    shutdown: impl std::future::Future<Output = ()>,
    ready: impl FnOnce(&Mounted),
) -> anyhow::Result<()> {
    let m = mount_volume(&a).await?;
    ready(&m);
    serve(m, a.options.threads, shutdown).await
}

/// Serves a mounted volume until `shutdown` (then unmounts) or an unmount from outside.
pub async fn serve(m: Mounted, threads: usize, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    keep_block_buffers_mapped();
    let heartbeat = m.session.spawn_heartbeat();
    let delegations = m.fs.start_delegations();
    let adapter = Arc::new(Adapter { fs: m.fs.clone(), params: m.params, notifier: m.fuse.notifier() });
    let rt = tokio::runtime::Handle::current();
    let fuse = m.fuse.clone();
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("fuse-session".into()).spawn(move || {
        let _ = done_tx.send(fuse.run(adapter, rt, threads));
    })?;
    tracing::info!(mountpoint = %m.mountpoint.display(), source = %m.source, "mounted");
    let mountpoint = m.mountpoint.clone();
    tokio::task::spawn_blocking(move || raise_readahead(&mountpoint));
    let result = tokio::select! {
        _ = shutdown => {
            tracing::info!(mountpoint = %m.mountpoint.display(), "unmounting");
            if let Err(e) = unmount(&m.mountpoint, false) {
                tracing::warn!(error = %e, "unmount failed (busy?); detaching lazily");
                unmount(&m.mountpoint, true).with_context(|| format!("unmounting {}", m.mountpoint.display()))?;
            }
            let _ = tokio::time::timeout(Duration::from_secs(10), &mut done_rx).await;
            Ok(())
        }
        r = &mut done_rx => {
            tracing::info!(mountpoint = %m.mountpoint.display(), "unmounted from outside");
            match r {
                Ok(Err(e)) => Err(anyhow::anyhow!("the FUSE session ended: {e}")),
                _ => Ok(()),
            }
        }
    };
    if let Some(d) = delegations {
        d.abort();
    }
    m.fs.give_back_all().await;
    heartbeat.abort();
    if let Err(e) = m.session.close().await {
        tracing::warn!(error = %e, "closing the session failed (it ends with its lease)");
    }
    result
}

/// Kernel read-ahead of a sequential reader on this mount.
pub const READAHEAD_KB: u32 = 4 * MAX_WRITE / 1024;

/// The kernel starts FUSE mounts with 128 KiB of read-ahead (the smaller of its default and what
/// INIT negotiated): sequential reads then arrive in 128 KiB requests. Raising the mount's
/// backing-device read-ahead lets them arrive as 1 MiB requests, several in flight. Best effort.
fn raise_readahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = std::fs::metadata(mountpoint) else { return };
    let dev = md.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let path = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    match std::fs::write(&path, READAHEAD_KB.to_string()) {
        Ok(()) => tracing::debug!(path, kb = READAHEAD_KB, "raised the mount's read-ahead"),
        Err(e) => tracing::debug!(path, error = %e, "could not raise the mount's read-ahead"),
    }
}

/// glibc serves allocations of 128 KiB and more (every block buffer) with a fresh mmap and unmaps
/// them on free, so each block written or read paid page faults and the kernel's zeroing of 4 MiB
/// (a fifth of the mount's CPU in a sequential write). Raising the thresholds lets freed block
/// buffers be reused from the heap. The heap then keeps its high-water mark, which the dirty limit
/// and the L1 size bound.
fn keep_block_buffers_mapped() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes glibc's allocation thresholds; any value is valid.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
}

/// `mount -o remount,...`: changes the flags (ro/rw, noexec, ...) of an existing mount.
///
/// The kernel releases FUSE files asynchronously: for a moment after close(2) an unlinked file
/// still counts as in use, and a read-only remount fails with EBUSY. That is retried for up to
/// 3 s; files really open for writing keep it failing.
pub fn remount(mountpoint: &Path, o: &MountOptions) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut r = crate::fuse::mount::remount(mountpoint, &o.kernel);
    while matches!(&r, Err(e) if e.raw_os_error() == Some(libc::EBUSY)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        r = crate::fuse::mount::remount(mountpoint, &o.kernel);
    }
    r.with_context(|| {
        format!("remounting {} {}", mountpoint.display(), if o.kernel.read_only { "read-only" } else { "read-write" })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_and_bad_ones_say_why() {
        let s: Source = "stratusfs://meta:7480/vol/team/a".parse().unwrap();
        assert_eq!(s, Source { server: "meta:7480".into(), volume: "vol".into(), subpath: "team/a".into() });
        assert_eq!(s.to_string(), "stratusfs://meta:7480/vol/team/a");
        let s: Source = "stratusfs://127.0.0.1:7480/vol".parse().unwrap();
        assert_eq!((s.volume.as_str(), s.subpath.as_str()), ("vol", ""));
        assert!("s3://x".parse::<Source>().unwrap_err().contains("stratusfs://HOST:PORT/VOLUME"));
        assert!("stratusfs://host/vol".parse::<Source>().unwrap_err().contains("port"));
        assert!("stratusfs://host:1".parse::<Source>().unwrap_err().contains("volume is missing"));
    }

    #[test]
    fn mount_options_parse_and_unknown_ones_are_named() {
        let o = MountOptions::parse(&[
            "ro,allow_other,noatime,umask=027".into(),
            "attr_ttl=60,entry_ttl=0.5,cache_mib=64,threads=8,token_file=/t,fingerprint=ab,defaults,_netdev".into(),
            "meta_wait=300".into(),
        ])
        .unwrap();
        assert!(o.kernel.read_only && o.kernel.allow_other && o.kernel.noatime && o.kernel.nodev);
        assert_eq!(o.fs.umask, 0o027);
        assert_eq!(o.fs.attr_ttl, Duration::from_secs(60));
        assert_eq!(o.fs.entry_ttl, Duration::from_millis(500));
        assert_eq!(o.fs.cache_bytes, 64 << 20);
        assert_eq!(o.threads, 8);
        assert_eq!(o.meta_wait, Duration::from_secs(300));
        assert_eq!(MountOptions::parse(&[]).unwrap().meta_wait, META_WAIT);
        assert_eq!(o.token_file.as_deref(), Some(Path::new("/t")));
        assert_eq!(o.fingerprint.as_deref(), Some("ab"));
        let e = MountOptions::parse(&["colour=blue".into()]).unwrap_err();
        assert!(e.contains("\"colour\"") && e.contains("allow_other"), "{e}");
        assert!(MountOptions::parse(&["attr_ttl=soon".into()]).unwrap_err().contains("seconds"));
        assert!(MountOptions::parse(&["umask=999".into()]).unwrap_err().contains("octal"));
    }
}
