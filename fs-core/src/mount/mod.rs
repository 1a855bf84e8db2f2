//! A mount: a volume served on a directory through FUSE, as a handle ([`Mount`]) that a program
//! starts, waits on, unmounts, or hands live to a successor process ([`Mount::quiesce`],
//! [`Quiesced::handover`], [`Mount::adopt`]).
//!
//! The source is `stratusfs://HOST:PORT/VOLUME[/SUBPATH]` ([`Source`]). SUBPATH, if given,
//! becomes the mount's root (the token's own subtree, if it has one, is the limit the server
//! enforces). Options travel in one value ([`MountOptions`], parsed by [`MountOptions::parse`]).
//! Several mounts may live in one process: each has its own caches, threads and switches.

pub mod handover;
pub mod options;

use std::io::{BufRead, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::crypto::VolumeKeys;
use crate::fs::StratusFs;
use crate::fs::handover::FsHandover;
use crate::fuse::abi::init;
use crate::fuse::adapter::Adapter;
use crate::fuse::mount::{mount, unmount};
use crate::fuse::session::{Channel, Ended, InitWanted, PendingRequest, Session as FuseSession, handshake};
use crate::metaclient::{ClientError, MetaChannel, Session, connect};
use crate::tls::ClientTrust;
use handover::{HANDOVER_VERSION, Handover, HandoverError, HandoverState};
pub use options::{BadSource, META_WAIT, MountOptions, OptionError, Source};

/// How a mount proves it may use the volume: the volume token, and how to trust the server.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub token: String,
    pub trust: ClientTrust,
}

/// What to mount where.
#[derive(Clone, Debug)]
pub struct MountSpec {
    pub source: Source,
    pub mountpoint: PathBuf,
    pub options: MountOptions,
    pub credentials: Credentials,
}

/// What can stop a mount from starting, serving or going away. Each message says what failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error(transparent)]
    Options(#[from] OptionError),
    #[error(transparent)]
    Source(#[from] BadSource),
    #[error("{0}")]
    Connect(#[source] Box<ClientError>),
    #[error("opening a session on volume {volume:?} at {server}: {source}")]
    Session { volume: String, server: String, source: Box<ClientError> },
    #[error("the volume's data path: {0}")]
    DataPath(String),
    #[error("{0}")]
    Encryption(String),
    #[error("resolving the subpath {path:?}: {why}")]
    Subpath { path: String, why: String },
    #[error(
        "the token is limited to {token_path}; the source names /{path}, outside it (give a source inside {token_path})"
    )]
    OutsideToken { path: String, token_path: String },
    #[error("mounting on {}: {source}", mountpoint.display())]
    Kernel { mountpoint: PathBuf, source: std::io::Error },
    #[error("the FUSE session on {} ended: {source}", mountpoint.display())]
    Fuse { mountpoint: PathBuf, source: std::io::Error },
    #[error("unmounting {}: {source}", mountpoint.display())]
    Unmount { mountpoint: PathBuf, source: std::io::Error },
    #[error("remounting {} {what}: {source}", mountpoint.display())]
    Remount { mountpoint: PathBuf, what: &'static str, source: std::io::Error },
    #[error("quiescing the mount on {}: {why}; it goes on serving", mountpoint.display())]
    Quiesce { mountpoint: PathBuf, why: String },
    #[error("adopting the mount on {}: {why}", mountpoint.display())]
    Adopt { mountpoint: PathBuf, why: String },
    #[error(transparent)]
    Handover(#[from] HandoverError),
}

/// Where a source's path is below the directory its token is limited to: the source names a
/// directory by its path in the volume, so a token limited to `/team` mounts `vol/team` (or
/// `vol/team/a`, or `vol` for the token's own directory), and refuses anything outside it.
pub fn path_below_token<'a>(token_subpath: &str, source_subpath: &'a str) -> Result<&'a str, MountError> {
    let token = token_subpath.trim_matches('/');
    let path = source_subpath.trim_matches('/');
    if token.is_empty() || path.is_empty() {
        return Ok(path);
    }
    if path == token {
        return Ok("");
    }
    match path.strip_prefix(token).and_then(|rest| rest.strip_prefix('/')) {
        Some(rest) => Ok(rest),
        None => Err(MountError::OutsideToken { path: path.to_string(), token_path: format!("/{token}") }),
    }
}

/// The capabilities a stratusfs mount asks the kernel for. Not ATOMIC_O_TRUNC: with it the
/// kernel sends an open's O_TRUNC to the filesystem before it checks ETXTBSY, and a running
/// program's file was truncated (docs/library.md, "open(O_TRUNC) of a running program").
pub const WANTED_FLAGS: u64 = init::ASYNC_READ
    | init::POSIX_LOCKS
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

/// Kernel read-ahead of a sequential reader on this mount.
pub const READAHEAD_KB: u32 = 4 * MAX_WRITE / 1024;

/// Counters of a live mount.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MountStats {
    /// Reads of decoded chunks answered from L1, and fetches from the block store.
    pub l1_hits: u64,
    pub l1_fetches: u64,
    /// FUSE channels (reader threads).
    pub channels: usize,
    /// L2 (disk cache) reads answered from disk, reads that asked the store, and entries that
    /// failed their checksum (each refetched): all 0 without `disk_cache_dir`.
    pub l2_hits: u64,
    pub l2_misses: u64,
    pub l2_damaged: u64,
    /// Requests the kernel sent, those answered with an error (but ENOENT and ENODATA, the
    /// normal negative answers), and the bytes read and written through the mount, since this
    /// process began serving it.
    pub requests: u64,
    pub errors: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Fsyncs and closes answered EIO because the writes they covered died with a crashed
    /// process ([`Mount::adopt_after_crash`]).
    pub lost_writes_reported: u64,
    /// Requests the kernel queued again after a crash (read by the dead process, not answered).
    pub resent_requests: u64,
}

/// The parts of a mount that outlive a quiesce.
struct Parts {
    spec: MountSpec,
    session: Arc<Session>,
    fs: Arc<StratusFs>,
    fuse: Arc<FuseSession>,
    adapter: Arc<Adapter>,
}

/// What runs while a mount serves.
struct Serving {
    done: tokio::sync::oneshot::Receiver<std::io::Result<Ended>>,
    heartbeat: tokio::task::JoinHandle<()>,
    delegations: Option<tokio::task::JoinHandle<()>>,
}

/// A live mount. End it with [`Mount::unmount`], [`Mount::wait`] / [`Mount::serve_until`], or a
/// handover; a `Mount` that is dropped is detached: its threads go on serving until the
/// filesystem is unmounted from outside.
pub struct Mount {
    /// Boxed: a mount travels back in errors (a quiesce or handover that failed still serves).
    parts: Box<Parts>,
    serving: Serving,
}

/// A mount that stopped reading requests: everything it read is answered (lock waits apart,
/// which travel on), its data is committed, its delegations are given back, and its server session
/// stays open. Hand it over ([`Quiesced::handover`]) or go on serving ([`Quiesced::resume`]).
pub struct Quiesced {
    parts: Box<Parts>,
    pending: Vec<PendingRequest>,
    handles: FsHandover,
    /// The session's heartbeat runs until a successor has it.
    heartbeat: tokio::task::JoinHandle<()>,
}

/// A mount taken from a predecessor and ready to serve ([`Mount::prepare_adopt`]); nothing reads
/// its kernel queue until [`Adopted::serve`].
pub struct Adopted {
    parts: Box<Parts>,
    pending: Vec<PendingRequest>,
}

impl Adopted {
    pub fn mountpoint(&self) -> &Path {
        &self.parts.spec.mountpoint
    }

    /// Serves what the kernel queued meanwhile and the lock waits the predecessor had read.
    pub fn serve(self) -> Mount {
        let m = Mount::serve(self.parts, self.pending);
        tracing::info!(mountpoint = %m.parts.spec.mountpoint.display(), source = %m.parts.spec.source, "adopted a live mount");
        m
    }
}

/// The keys of the session's volume when it is encrypted (the key derivation runs off the
/// runtime's workers). On failure (no secret, a wrong one) a session this mount opened (`own`)
/// is closed again: the mount leaves nothing behind on the server, and no object was touched. An
/// adopted session stays: its predecessor goes on serving it.
async fn open_keys(
    session: &Arc<Session>,
    cfg: &crate::fs::FsConfig,
    own: bool,
) -> Result<Option<Arc<VolumeKeys>>, MountError> {
    let volume = session.reply.volume.clone().unwrap_or_default();
    let cfg = cfg.clone();
    let keys = tokio::task::spawn_blocking(move || crate::fs::volume_keys(&volume, &cfg))
        .await
        .unwrap_or_else(|e| Err(format!("opening the volume's keys: {e}")));
    match keys {
        Ok(keys) => Ok(keys),
        Err(why) => {
            if own && let Err(e) = session.close().await {
                tracing::warn!(error = %e, "closing the session of a mount that failed; its lease ends it");
            }
            Err(MountError::Encryption(why))
        }
    }
}

fn client_name(mountpoint: &Path) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}:{}", host.trim(), mountpoint.display())
}

impl Mount {
    /// Connects, opens a session, mounts and serves; the kernel is initialised when this returns.
    pub async fn start(spec: MountSpec) -> Result<Mount, MountError> {
        let MountSpec { source, mountpoint, options, credentials } = &spec;
        let channel = connect(&source.server, &credentials.trust, options.meta_wait)
            .await
            .map_err(|e| MountError::Connect(Box::new(e)))?;
        let channel = MetaChannel::new(channel, options.meta_wait);
        let session = Session::open(channel, &source.volume, &credentials.token, &client_name(mountpoint))
            .await
            .map_err(|e| MountError::Session {
                volume: source.volume.clone(),
                server: source.server.clone(),
                source: Box::new(e),
            })?;
        let keys = open_keys(&session, &options.fs, true).await?;
        let mut fs = StratusFs::new(session.clone(), options.fs.clone(), keys).map_err(MountError::DataPath)?;
        let below = path_below_token(&session.reply.subpath, &source.subpath)?;
        if !below.is_empty() {
            fs.set_root_path(below).await.map_err(|why| MountError::Subpath { path: source.subpath.clone(), why })?;
        }
        let mut kernel = options.kernel.clone();
        kernel.max_read = MAX_WRITE;
        // A read-only token: the kernel refuses changes before they reach the server.
        kernel.read_only |= session.reply.read_only;
        let kernel_err = |e| MountError::Kernel { mountpoint: mountpoint.clone(), source: e };
        let fd = mount(mountpoint, &source.to_string(), "stratusfs", &kernel).map_err(kernel_err)?;
        let chan = Channel::from_fd(fd);
        let wanted = InitWanted { flags: WANTED_FLAGS, max_write: MAX_WRITE, max_readahead: MAX_WRITE };
        let (chan, params) = tokio::task::spawn_blocking(move || handshake(&chan, wanted).map(|p| (chan, p)))
            .await
            .map_err(|e| kernel_err(std::io::Error::other(e)))?
            .map_err(kernel_err)?;
        let mut chans = vec![];
        for _ in 1..options.threads.max(1) {
            chans.push(chan.clone_channel().map_err(kernel_err)?);
        }
        chans.insert(0, chan);
        let fuse = Arc::new(FuseSession::new(chans, params).map_err(kernel_err)?);
        let mp = mountpoint.clone();
        tokio::task::spawn_blocking(move || raise_readahead(&mp));
        let m = Mount::serve(Parts::new(spec, session, fs, fuse), Vec::new());
        tracing::info!(mountpoint = %m.parts.spec.mountpoint.display(), source = %m.parts.spec.source, "mounted");
        Ok(m)
    }

    /// Goes on serving a mount a predecessor handed over ([`Quiesced::handover`]): resumes its
    /// server session (open handles and locks live there), takes its root by inode, serves what
    /// the kernel queued meanwhile and the lock waits it had read.
    pub async fn adopt(h: Handover) -> Result<Mount, MountError> {
        Ok(Mount::prepare_adopt(h).await?.serve())
    }

    /// The first half of [`Mount::adopt`]: everything but reading the kernel's queue (the
    /// server session resumed, the handles taken, the keys opened). A program that takes several
    /// mounts at once prepares them all before any serves, so that a failure leaves every one
    /// with its predecessor: dropping an [`Adopted`] leaves the server session open and the
    /// kernel's queue untouched.
    pub async fn prepare_adopt(h: Handover) -> Result<Adopted, MountError> {
        let Handover { state, fds } = h;
        let adopt_err = |why: String| MountError::Adopt { mountpoint: state.mountpoint.clone(), why };
        if state.version != HANDOVER_VERSION {
            return Err(HandoverError::Version { found: state.version }.into());
        }
        if fds.len() != state.fds || fds.is_empty() {
            return Err(HandoverError::Fds { expected: state.fds, got: fds.len() }.into());
        }
        let id = hex::decode(&state.session).map_err(|_| adopt_err(format!("bad session id {:?}", state.session)))?;
        let channel = connect(&state.source.server, &state.trust, state.options.meta_wait)
            .await
            .map_err(|e| MountError::Connect(Box::new(e)))?;
        let channel = MetaChannel::new(channel, state.options.meta_wait);
        let session =
            Session::resume_id(channel, &state.source.volume, &state.token, &client_name(&state.mountpoint), &id)
                .await
                .map_err(|e| adopt_err(format!("resuming the server session: {e}")))?;
        let keys = open_keys(&session, &state.options.fs, false).await?;
        let mut fs = StratusFs::new(session.clone(), state.options.fs.clone(), keys).map_err(MountError::DataPath)?;
        fs.set_root(state.root);
        fs.adopt_handles(&state.fs).await;
        let chans = fds.into_iter().map(Channel::from_fd).collect();
        let fuse = Arc::new(FuseSession::new(chans, state.init).map_err(|e| adopt_err(e.to_string()))?);
        let spec = MountSpec {
            source: state.source,
            mountpoint: state.mountpoint,
            options: state.options,
            credentials: Credentials { token: state.token, trust: state.trust },
        };
        Ok(Adopted { parts: Parts::new(spec, session, fs, fuse), pending: state.pending })
    }

    /// Starts the readers (after registering lock waits a predecessor read), the heartbeat and
    /// the delegations' timer.
    fn serve(parts: Box<Parts>, pending: Vec<PendingRequest>) -> Mount {
        let rt = tokio::runtime::Handle::current();
        // A fresh stop switch before the readers start: a quiesce right after must reach them.
        parts.fuse.arm();
        parts.fuse.resume_waiting(&parts.adapter, &rt, pending);
        let heartbeat = parts.session.spawn_heartbeat();
        let delegations = parts.fs.start_delegations();
        let (fuse, adapter) = (parts.fuse.clone(), parts.adapter.clone());
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new().name("fuse-session".into()).spawn(move || {
            let _ = done_tx.send(fuse.run(adapter, rt));
        });
        if let Err(e) = spawned {
            // The receiver reports it: the sender is gone.
            tracing::error!(error = %e, "starting the FUSE session thread failed");
        }
        Mount { parts, serving: Serving { done, heartbeat, delegations } }
    }

    pub fn mountpoint(&self) -> &Path {
        &self.parts.spec.mountpoint
    }

    pub fn source(&self) -> &Source {
        &self.parts.spec.source
    }

    /// The server session's id (hex), as `stratusfs admin usage` lists it.
    pub fn session_id(&self) -> String {
        self.parts.session.id_hex()
    }

    pub fn stats(&self) -> MountStats {
        let (l1_hits, l1_fetches) = self.parts.fs.cache_stats();
        let (l2_hits, l2_misses, l2_damaged) = self.parts.fs.disk_cache_stats().unwrap_or_default();
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.parts.adapter.counters;
        MountStats {
            l1_hits,
            l1_fetches,
            channels: self.parts.fuse.channels(),
            l2_hits,
            l2_misses,
            l2_damaged,
            requests: c.requests.load(Relaxed),
            errors: c.errors.load(Relaxed),
            bytes_read: c.bytes_read.load(Relaxed),
            bytes_written: c.bytes_written.load(Relaxed),
            lost_writes_reported: self.parts.fs.lost_reported(),
            resent_requests: c.resent.load(Relaxed),
        }
    }

    /// What a process keeping this mount alive beyond this one (a holder of its fds) needs to give
    /// a successor after a crash: the handover value without handles or lock waits (those are
    /// not known then) and duplicates of the FUSE fds. See [`Mount::adopt_after_crash`].
    pub fn crash_record(&self) -> Result<Handover, MountError> {
        handover_value(&self.parts, FsHandover::default(), Vec::new())
    }

    /// Tells `w` which files hold unsaved writes (see [`crate::fs::UnsavedWatcher`]).
    pub fn watch_unsaved(&self, w: crate::fs::UnsavedWatcher) {
        self.parts.fs.watch_unsaved(w);
    }

    /// Serves a mount whose process died (kill -9, OOM) from its [`Mount::crash_record`] and its
    /// fds kept elsewhere: resumes the server session (its opens and locks live there; handles the
    /// kernel still holds are taken as they are used), has the kernel queue again every request
    /// the dead process read and did not answer (FUSE_NOTIFY_RESEND), and reports the writes to
    /// `lost` files lost ([`crate::fs::UnsavedWatcher`]): EIO on their next fsync and on the close
    /// of their handles, never a success over lost bytes.
    pub async fn adopt_after_crash(h: Handover, lost: &[u64]) -> Result<Mount, MountError> {
        let a = Mount::prepare_adopt(h).await?;
        a.parts.fs.mark_lost(lost);
        // Before any reader of this process reads: the kernel moves every request read and not
        // answered back to its queue, and those are only the dead process's now (one this
        // process had read would be read again and answered twice).
        if let Err(e) = a.parts.fuse.resend() {
            // A kernel before 6.9: requests the dead process had read wait until interrupted.
            tracing::error!(error = %e, "FUSE_NOTIFY_RESEND failed; requests the crashed process had read stay unanswered");
        }
        Ok(a.serve())
    }

    /// Waits until the mount ends from outside (umount, `fusermount -u`, the connection
    /// aborted); then gives its delegations back and closes its session.
    pub async fn wait(self) -> Result<(), MountError> {
        self.serve_until(std::future::pending()).await
    }

    /// Serves until `shutdown` resolves (then unmounts, as [`Mount::unmount`]) or the mount ends
    /// from outside (as [`Mount::wait`]).
    pub async fn serve_until(mut self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), MountError> {
        let ended = tokio::select! {
            _ = shutdown => None,
            r = &mut self.serving.done => Some(r),
        };
        let Some(r) = ended else { return self.unmount().await };
        tracing::info!(mountpoint = %self.mountpoint().display(), "unmounted from outside");
        self.finish().await;
        match r {
            Ok(Err(e)) => Err(MountError::Fuse { mountpoint: self.parts.spec.mountpoint.clone(), source: e }),
            _ => Ok(()),
        }
    }

    /// Unmounts (lazily when busy: open files keep working until closed), waits for the
    /// session to end and closes the server session.
    pub async fn unmount(mut self) -> Result<(), MountError> {
        let mp = self.parts.spec.mountpoint.clone();
        tracing::info!(mountpoint = %mp.display(), "unmounting");
        if let Err(e) = unmount(&mp, false) {
            tracing::warn!(error = %e, "unmount failed (busy?); detaching lazily");
            unmount(&mp, true).map_err(|source| MountError::Unmount { mountpoint: mp.clone(), source })?;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.serving.done).await;
        self.finish().await;
        Ok(())
    }

    async fn finish(&self) {
        if let Some(d) = &self.serving.delegations {
            d.abort();
        }
        if let Err(errno) = self.parts.fs.give_back_all().await {
            tracing::error!(errno, "giving the delegations back failed; files created under them may be lost");
        }
        self.parts.fs.commit_unsaved().await;
        let (l1_hits, l1_fetches) = self.parts.fs.cache_stats();
        match self.parts.fs.disk_cache_stats() {
            Some((l2_hits, l2_misses, l2_damaged)) => {
                tracing::info!(l1_hits, l1_fetches, l2_hits, l2_misses, l2_damaged, "caches at unmount")
            }
            None => tracing::info!(l1_hits, l1_fetches, "caches at unmount"),
        }
        self.serving.heartbeat.abort();
        if let Err(e) = self.parts.session.close().await {
            tracing::warn!(error = %e, "closing the session failed (it ends with its lease)");
        }
    }

    /// Stops reading requests and brings the mount to a state a successor can take over (see
    /// [`Quiesced`]). Requests the kernel queues meanwhile wait for whoever serves next. When
    /// the requests already read are not answered within `timeout`, or the data cannot be
    /// committed, the mount goes on serving and comes back with the error.
    ///
    /// A request that waits for the kernel itself while being answered can hold the drain up
    /// until the timeout: an open that drops the kernel's cached pages of a file waits for page
    /// locks, which a read-ahead still queued (unread) holds. The mount then goes on serving.
    pub async fn quiesce(self, timeout: Duration) -> Result<Quiesced, (Mount, MountError)> {
        let Mount { parts, serving } = self;
        let Serving { done, heartbeat, delegations } = serving;
        let mountpoint = parts.spec.mountpoint.clone();
        let fail = |parts: Box<Parts>, pending, why: String| {
            heartbeat.abort();
            let m = Mount::serve(parts, pending);
            (m, MountError::Quiesce { mountpoint: mountpoint.clone(), why })
        };
        parts.fuse.stop(&mountpoint);
        // The readers leave as soon as the request each is handling has been polled once.
        let stopped = done.await;
        if let Some(d) = &delegations {
            d.abort();
        }
        match stopped {
            Ok(Ok(Ended::Stopped)) => {}
            Ok(Ok(Ended::Unmounted)) => return Err(fail(parts, Vec::new(), "it was unmounted meanwhile".into())),
            Ok(Err(e)) => return Err(fail(parts, Vec::new(), format!("the FUSE session failed: {e}"))),
            Err(_) => return Err(fail(parts, Vec::new(), "the FUSE session thread is gone".into())),
        }
        if tokio::time::timeout(timeout, parts.fuse.drained()).await.is_err() {
            // The lock waits stay registered with their tasks: serving again takes them as they are.
            let why = format!("requests read before the stop were not answered within {timeout:?}");
            return Err(fail(parts, Vec::new(), why));
        }
        let pending = parts.fuse.take_waiting();
        if let Err(errno) = parts.fs.quiesce().await {
            let why = format!("committing its data failed ({})", std::io::Error::from_raw_os_error(errno));
            return Err(fail(parts, pending, why));
        }
        let handles = parts.fs.handles().await;
        tracing::info!(mountpoint = %mountpoint.display(), lock_waits = pending.len(), handles = handles.handles.len(), "quiesced for a handover");
        Ok(Quiesced { parts, pending, handles, heartbeat })
    }

    /// Receives a mount handed over on `sock` ([`Quiesced::send_to`]), adopts it
    /// ([`Mount::adopt`]) and tells the predecessor whether it did: on a refusal (an unknown
    /// version, a session the server no longer has, ...) the predecessor goes on serving.
    pub async fn adopt_from(sock: &UnixStream) -> Result<Mount, MountError> {
        let adopted = match Handover::receive(sock) {
            Ok(h) => Mount::adopt(h).await,
            Err(e) => Err(e.into()),
        };
        let answer = match &adopted {
            Ok(_) => "adopted\n".to_string(),
            Err(e) => format!("refused {}\n", e.to_string().replace('\n', " ")),
        };
        if let Err(e) = (&*sock).write_all(answer.as_bytes()) {
            tracing::warn!(error = %e, "telling the predecessor the handover's outcome failed");
        }
        adopted
    }
}

impl Parts {
    fn new(spec: MountSpec, session: Arc<Session>, fs: StratusFs, fuse: Arc<FuseSession>) -> Box<Parts> {
        let fs = fs.into_arc();
        let adapter = Arc::new(Adapter {
            fs: fs.clone(),
            params: fuse.params,
            notifier: fuse.notifier(),
            counters: Default::default(),
        });
        Box::new(Parts { spec, session, fs, fuse, adapter })
    }
}

impl Quiesced {
    /// Lock waits read and not answered (they travel with the handover).
    pub fn pending_lock_waits(&self) -> usize {
        self.pending.len()
    }

    /// The handover value and duplicates of the FUSE fds (the parts stay here).
    fn value(&self) -> Result<Handover, MountError> {
        handover_value(&self.parts, self.handles.clone(), self.pending.clone())
    }

    /// The handover value and duplicates of the FUSE fds, for a successor in this process or one
    /// reached by other means than [`Quiesced::send_to`]. This process then holds nothing of the
    /// mount: no reader, no heartbeat; the server session stays open for the successor (it
    /// expires with its lease if no one resumes it).
    pub fn handover(self) -> Result<Handover, MountError> {
        let h = self.value()?;
        self.heartbeat.abort();
        Ok(h)
    }

    /// Sends the handover value and duplicates of the FUSE fds on `sock` and keeps everything
    /// here: the successor's answer decides between [`Quiesced::release`] and
    /// [`Quiesced::resume`] (a program moving several mounts at once sends them all first).
    pub fn send(&self, sock: &UnixStream) -> Result<(), MountError> {
        let h = self.value()?;
        h.send(sock).map_err(|e| MountError::Quiesce {
            mountpoint: self.parts.spec.mountpoint.clone(),
            why: format!("sending the handover failed: {e}"),
        })
    }

    /// The successor serves the mount now: this process lets go of it (no reader, no
    /// heartbeat; its copies of the FUSE fds close).
    pub fn release(self) {
        tracing::info!(mountpoint = %self.parts.spec.mountpoint.display(), "handed over; the successor serves the mount");
        self.heartbeat.abort();
    }

    /// Hands the mount to the successor on `sock` ([`Mount::adopt_from`]) and waits up to
    /// `timeout` for its answer. Adopted: this process holds nothing of the mount any more. Refused,
    /// or no answer: the mount goes on serving here and comes back with the error.
    pub fn send_to(self, sock: &UnixStream, timeout: Duration) -> Result<(), (Mount, MountError)> {
        let mountpoint = self.parts.spec.mountpoint.clone();
        let refused =
            |q: Quiesced, why: String| (q.resume(), MountError::Quiesce { mountpoint: mountpoint.clone(), why });
        if let Err(e) = self.send(sock) {
            return Err((self.resume(), e));
        }
        let mut answer = String::new();
        let read =
            sock.set_read_timeout(Some(timeout)).and_then(|()| std::io::BufReader::new(sock).read_line(&mut answer));
        match (read, answer.trim()) {
            (Ok(_), "adopted") => {
                self.release();
                Ok(())
            }
            (Ok(_), a) if a.starts_with("refused") => {
                let why = format!("the successor {a}");
                Err(refused(self, why))
            }
            (Ok(_), a) => Err(refused(self, format!("the successor closed the socket without adopting ({a:?})"))),
            (Err(e), _) => Err(refused(self, format!("no answer from the successor within {timeout:?}: {e}"))),
        }
    }

    /// Goes on serving here (the successor failed or never came).
    pub fn resume(self) -> Mount {
        tracing::info!(mountpoint = %self.parts.spec.mountpoint.display(), "serving again after a quiesce");
        self.heartbeat.abort();
        Mount::serve(self.parts, self.pending)
    }
}

/// A mount's handover value with `fs` and `pending`, and duplicates of its FUSE fds.
fn handover_value(parts: &Parts, fs: FsHandover, pending: Vec<PendingRequest>) -> Result<Handover, MountError> {
    let fds = parts.fuse.dup_fds().map_err(|e| MountError::Quiesce {
        mountpoint: parts.spec.mountpoint.clone(),
        why: format!("duplicating the FUSE fds: {e}"),
    })?;
    let spec = &parts.spec;
    let state = HandoverState {
        version: HANDOVER_VERSION,
        source: spec.source.clone(),
        mountpoint: spec.mountpoint.clone(),
        options: spec.options.clone(),
        token: spec.credentials.token.clone(),
        trust: spec.credentials.trust.clone(),
        init: parts.fuse.params,
        root: parts.fs.root(),
        session: parts.session.id_hex(),
        fs,
        pending,
        fds: fds.len(),
    };
    Ok(Handover { state, fds })
}

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

/// Process-wide: lets freed block buffers be reused from the heap instead of returned to the
/// kernel. glibc serves allocations of 128 KiB and more (every block buffer) with a fresh mmap
/// and unmaps them on free, so each block written or read paid page faults and the kernel's
/// zeroing of 4 MiB (a fifth of a mount's CPU in a sequential write). The heap then keeps its
/// high-water mark, which the mounts' dirty limits and L1 sizes bound. A process that runs mounts
/// calls this once (the `stratusfs` command does for `mount` and `up`); it is not a mount's
/// business to change its host process's allocator.
pub fn keep_freed_buffers() {
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
pub fn remount(mountpoint: &Path, o: &MountOptions) -> Result<(), MountError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut r = crate::fuse::mount::remount(mountpoint, &o.kernel);
    while matches!(&r, Err(e) if e.raw_os_error() == Some(libc::EBUSY)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        r = crate::fuse::mount::remount(mountpoint, &o.kernel);
    }
    r.map_err(|source| MountError::Remount {
        mountpoint: mountpoint.to_path_buf(),
        what: if o.kernel.read_only { "read-only" } else { "read-write" },
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_names_its_directory_by_its_path_in_the_volume() {
        // A whole-volume token: the path is the path.
        assert_eq!(path_below_token("", "team/a").unwrap(), "team/a");
        assert_eq!(path_below_token("/", "").unwrap(), "");
        // A token limited to /team: its own directory, or one inside it.
        assert_eq!(path_below_token("/team", "team").unwrap(), "");
        assert_eq!(path_below_token("/team", "").unwrap(), "");
        assert_eq!(path_below_token("/team/", "team/a/b").unwrap(), "a/b");
        for outside in ["other", "teamx", "te", "other/team"] {
            let e = path_below_token("/team", outside).unwrap_err().to_string();
            assert!(e.contains("limited to /team") && e.contains(&format!("/{outside}")), "{e}");
        }
    }
}
