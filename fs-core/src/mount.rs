//! `stratusfs mount`: a volume on a directory through FUSE.
//!
//! The source is `stratusfs://HOST:PORT/VOLUME[/SUBPATH]` (the same for `stratusfs mount`,
//! `mount -t stratusfs`, fstab and CSI). SUBPATH, if given, becomes the mount's root (the token's
//! own subtree, if it has one, is the limit the server enforces).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::client::{FsConfig, StratusFs};
use crate::fuse::abi::init;
use crate::fuse::adapter::Adapter;
use crate::fuse::mount::{KernelOptions, mount, unmount};
use crate::fuse::session::{Channel, InitWanted, Session as FuseSession, handshake};
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

#[derive(Clone, Debug)]
pub struct MountArgs {
    pub source: Source,
    pub mountpoint: PathBuf,
    pub token: String,
    pub trust: ClientTrust,
    pub kernel: KernelOptions,
    pub fs: FsConfig,
    pub threads: usize,
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
    | init::SETXATTR_EXT;

/// The largest write the kernel sends (and read it asks for).
pub const MAX_WRITE: u32 = 1 << 20;

/// Mounts, serves until `shutdown` resolves (or the filesystem is unmounted from outside), then
/// unmounts and closes the session.
pub async fn run_mount(a: MountArgs, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let channel = connect(&a.source.server, &a.trust).await?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let client = format!("{}:{}", host.trim(), a.mountpoint.display());
    let session = Session::open(channel, &a.source.volume, &a.token, &client).await?;
    let heartbeat = session.spawn_heartbeat();
    let mut fs = StratusFs::new(session.clone(), a.fs.clone()).map_err(anyhow::Error::msg)?;
    if !a.source.subpath.is_empty() {
        fs.set_root_path(&a.source.subpath)
            .await
            .map_err(|e| anyhow::anyhow!("resolving the subpath {:?}: {e}", a.source.subpath))?;
    }
    let fs = Arc::new(fs);
    let mut kernel = a.kernel.clone();
    kernel.max_read = MAX_WRITE;
    let source = format!(
        "stratusfs://{}/{}{}",
        a.source.server,
        a.source.volume,
        if a.source.subpath.is_empty() { String::new() } else { format!("/{}", a.source.subpath) }
    );
    let fd = mount(&a.mountpoint, &source, "stratusfs", &kernel)?;
    let chan = Channel::from_fd(fd);
    let wanted = InitWanted { flags: WANTED_FLAGS, max_write: MAX_WRITE, max_readahead: MAX_WRITE };
    let (chan, params) = tokio::task::spawn_blocking(move || handshake(&chan, wanted).map(|p| (chan, p))).await??;
    let fuse = Arc::new(FuseSession::new(chan, params));
    let adapter = Arc::new(Adapter { fs: fs.clone(), params, notifier: fuse.notifier() });
    let rt = tokio::runtime::Handle::current();
    let threads = a.threads.max(1);
    let f2 = fuse.clone();
    let serving =
        std::thread::Builder::new().name("fuse-session".into()).spawn(move || f2.run(adapter, rt, threads))?;
    tracing::info!(mountpoint = %a.mountpoint.display(), source, "mounted");
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let r = serving.join();
        let _ = done_tx.send(r);
    });
    tokio::select! {
        _ = shutdown => {
            tracing::info!(mountpoint = %a.mountpoint.display(), "unmounting");
            if let Err(e) = unmount(&a.mountpoint, false) {
                tracing::warn!(error = %e, "unmount failed (busy?); detaching lazily");
                unmount(&a.mountpoint, true).with_context(|| format!("unmounting {}", a.mountpoint.display()))?;
            }
            let _ = tokio::time::timeout(Duration::from_secs(10), &mut done_rx).await;
        }
        r = &mut done_rx => {
            if let Ok(Ok(Err(e))) = r {
                bail!("the FUSE session ended: {e}");
            }
            tracing::info!(mountpoint = %a.mountpoint.display(), "unmounted from outside");
        }
    }
    heartbeat.abort();
    let _ = session.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_and_bad_ones_say_why() {
        let s: Source = "stratusfs://meta:7480/vol/team/a".parse().unwrap();
        assert_eq!(s, Source { server: "meta:7480".into(), volume: "vol".into(), subpath: "team/a".into() });
        let s: Source = "stratusfs://127.0.0.1:7480/vol".parse().unwrap();
        assert_eq!((s.volume.as_str(), s.subpath.as_str()), ("vol", ""));
        assert!("s3://x".parse::<Source>().unwrap_err().contains("stratusfs://HOST:PORT/VOLUME"));
        assert!("stratusfs://host/vol".parse::<Source>().unwrap_err().contains("port"));
        assert!("stratusfs://host:1".parse::<Source>().unwrap_err().contains("volume is missing"));
    }
}
