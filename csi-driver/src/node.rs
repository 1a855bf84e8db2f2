//! The Node service: FUSE sessions run in this process, one per (source, token, options, mount
//! group, read-only, encryption secret), each mounted under the state directory and bind-mounted into every pod's
//! target that publishes it. A read-only publish never shares a read-write session (its session
//! is mounted `ro`). The last target of a session unpublished ends the session.
//!
//! A plugin starting while another serves the node takes every live session over from it
//! (`takeover.rs`: a rollout or upgrade, nothing in the pods notices). A plugin that finds no one
//! serving (a first start, or after a crash) owns the state directory alone: its leftover mounts
//! answer ENOTCONN and are detached, and a publish onto, or an unpublish of, such a stale target
//! detaches it first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fs_core::{ClientTrust, Credentials, Mount, MountError, MountOptions, MountSpec, Quiesced, Source};
use nix::mount::{MntFlags, MsFlags};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};

use crate::caps;
use crate::csi::node_server::Node;
use crate::csi::node_service_capability::{Type, rpc};
use crate::csi::{self, NodeServiceCapability};
use crate::error::{CsiError, CsiResult};
use crate::holder::Holder;
use crate::takeover::{self, SessionInfo};

/// How long a starting plugin waits for the owner lock's holder to answer on the handover socket
/// (it holds the lock from its start until it listens).
const OWNER_WAIT: Duration = Duration::from_secs(60);

/// How often the fd holder is given every session again (a holder that restarted has none).
const HOLDER_REFRESH: Duration = Duration::from_secs(10);

/// The volume context keys a PV may carry (the sidecars' and kubelet's own are let through).
const CONTEXT_SOURCE: &str = "source";
const CONTEXT_AT_TIME: &str = "atTime";

/// Options the driver sets itself; a PV's mountOptions may not.
const DRIVER_OPTIONS: [&str; 9] = [
    "token_file",
    "ca_file",
    "fingerprint",
    "log_file",
    "encryption_secret_file",
    "remount",
    "disk_cache_dir",
    // Creates under a directory delegation are answered before the server has them; a crash of
    // the plugin would lose files whose close had succeeded, so the driver turns them off.
    "delegations",
    "nodelegations",
];

/// How the node plugin runs its sessions.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: String,
    /// Sessions' mount points and secrets (a host path: `/var/lib/stratusfs-csi`).
    pub state_dir: PathBuf,
    /// The L2 disk cache's host path and size per session (`None`: no disk cache).
    pub cache_dir: Option<PathBuf>,
    pub cache_mib: u64,
    /// Where to dial a Service's `HOST:PORT` instead (`--service-address`); TLS is still verified
    /// against the Service's name.
    pub service_addresses: BTreeMap<String, String>,
}

/// One FUSE session and the targets bound to it.
struct Session {
    mount: Mount,
    dir: PathBuf,
    targets: BTreeSet<PathBuf>,
    volume_id: String,
}

impl Session {
    fn info(&self, key: &str) -> SessionInfo {
        SessionInfo {
            key: key.to_string(),
            dir: self.dir.clone(),
            targets: self.targets.iter().cloned().collect(),
            volume_id: self.volume_id.clone(),
        }
    }

    fn from_info(info: SessionInfo, mount: Mount) -> Session {
        Session { mount, dir: info.dir, targets: info.targets.into_iter().collect(), volume_id: info.volume_id }
    }
}

#[derive(Default)]
struct State {
    sessions: HashMap<String, Session>,
    /// Target → the key of its session.
    targets: HashMap<PathBuf, String>,
    /// The owner lock (`takeover.rs`); `None` once handed over.
    lock: Option<OwnedFd>,
}

impl State {
    fn insert(&mut self, info: SessionInfo, mount: Mount) {
        for t in &info.targets {
            self.targets.insert(t.clone(), info.key.clone());
        }
        self.sessions.insert(info.key.clone(), Session::from_info(info, mount));
    }
}

pub struct NodeService {
    cfg: NodeConfig,
    state: Mutex<State>,
    /// The fd holder beside this plugin: keeps every session alive across a crash of it.
    holder: Arc<Holder>,
    /// Whether the sessions were handed over (the process then serves nothing). Set while the
    /// state's lock is held, so a publish that waited for the handover sees it.
    handed: tokio::sync::watch::Sender<bool>,
}

/// What one publish asks for, checked.
struct Publish {
    source: Source,
    key: String,
    /// The session's directory under the state directory.
    dir: PathBuf,
    options: MountOptions,
    token: String,
    ca_pem: String,
    encryption_secret: Option<String>,
    group: Option<u32>,
    read_only: bool,
}

impl NodeService {
    /// Starts the node service on the node's state directory: takes the sessions over from the
    /// plugin serving the node, if one answers on the handover socket; else owns the directory
    /// (detaching the mounts a crashed predecessor left). Then listens on the handover socket for
    /// its own successor.
    pub async fn start(cfg: NodeConfig) -> CsiResult<Arc<NodeService>> {
        let sessions = cfg.state_dir.join("sessions");
        std::fs::create_dir_all(&sessions)
            .map_err(|e| CsiError::Internal(format!("making the state directory {}: {e}", sessions.display())))?;
        let sock_path = takeover::socket_path(&cfg.state_dir);
        let deadline = Instant::now() + OWNER_WAIT;
        let mut state = State::default();
        let holder = Arc::new(Holder::new(&cfg.state_dir));
        let rt = tokio::runtime::Handle::current();
        loop {
            if let Ok(sock) = std::os::unix::net::UnixStream::connect(&sock_path) {
                let started = Instant::now();
                match tokio::task::block_in_place(|| rt.block_on(takeover::take(&sock))) {
                    Ok(taken) => {
                        let n = taken.sessions.len();
                        for (info, mount) in taken.sessions {
                            state.insert(info, mount);
                        }
                        state.lock = Some(taken.lock);
                        tracing::info!(sessions = n, took = ?started.elapsed(), "took the node's sessions over from the plugin serving before");
                        break;
                    }
                    Err(e @ takeover::TakeoverError::Gone(_)) if Instant::now() < deadline => {
                        tracing::warn!(error = %e, "the handover broke off");
                    }
                    Err(e) => return Err(CsiError::HandoverRefused(e.to_string())),
                }
            } else {
                let lock = takeover::try_lock(&cfg.state_dir).map_err(|e| {
                    CsiError::Internal(format!(
                        "taking the owner lock {}: {e}",
                        takeover::lock_path(&cfg.state_dir).display()
                    ))
                })?;
                if let Some(lock) = lock {
                    // No plugin serves the node: the sessions the holder kept (a crash) are ours.
                    recover(&holder, &mut state).await;
                    detach_leftovers(&sessions, &state.sessions);
                    state.lock = Some(lock);
                    break;
                }
                if Instant::now() > deadline {
                    return Err(CsiError::Internal(format!(
                        "another node plugin holds {} but does not answer on {} within {OWNER_WAIT:?}: is it stuck?",
                        takeover::lock_path(&cfg.state_dir).display(),
                        sock_path.display()
                    )));
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The owner lock is held: no live process listens on the socket's path.
        let _ = std::fs::remove_file(&sock_path);
        let listener = tokio::net::UnixListener::bind(&sock_path)
            .map_err(|e| CsiError::Internal(format!("listening on {}: {e}", sock_path.display())))?;
        std::fs::set_permissions(&sock_path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| CsiError::Internal(format!("securing {}: {e}", sock_path.display())))?;
        let node = Arc::new(NodeService {
            cfg,
            state: Mutex::new(state),
            holder,
            handed: tokio::sync::watch::Sender::new(false),
        });
        node.keep_all().await;
        // A holder that restarted (its container) lost what it kept: it is given every session
        // again now and then.
        let weak = Arc::downgrade(&node);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(HOLDER_REFRESH).await;
                let Some(node) = weak.upgrade() else { return };
                if node.is_handed_over() {
                    return;
                }
                node.keep_all().await;
            }
        });
        tokio::spawn(node.clone().listen(listener));
        Ok(node)
    }

    /// Gives the holder every session (and which of their files hold unsaved writes).
    async fn keep_all(&self) {
        let state = self.state.lock().await;
        for (key, s) in &state.sessions {
            self.watch(key, s);
            self.keep(key, s);
        }
    }

    /// Has the holder told which files of session `key` hold unsaved writes.
    fn watch(&self, key: &str, s: &Session) {
        let (holder, key) = (self.holder.clone(), key.to_string());
        s.mount.watch_unsaved(Arc::new(move |ino, unsaved| holder.unsaved(&key, ino, unsaved)));
    }

    /// Gives the holder session `key` as it is now (its fds, record and targets).
    fn keep(&self, key: &str, s: &Session) {
        match s.mount.crash_record() {
            Ok(h) => self.holder.keep(s.info(key), &h),
            Err(e) => tracing::warn!(session = key, error = %e, "the fd holder could not be given the session"),
        }
    }

    /// Resolves once this plugin handed its sessions to a successor.
    pub async fn handed_over(&self) {
        let _ = self.handed.subscribe().wait_for(|&h| h).await;
    }

    /// Whether this plugin handed its sessions to a successor.
    pub fn is_handed_over(&self) -> bool {
        *self.handed.borrow()
    }

    /// Refuses a call that comes after the handover.
    fn serving(&self) -> CsiResult<()> {
        match self.is_handed_over() {
            false => Ok(()),
            true => Err(CsiError::Unavailable(
                "this node plugin handed its sessions to its successor and is exiting; retry".into(),
            )),
        }
    }

    /// Answers successors on the handover socket until one takes the sessions.
    async fn listen(self: Arc<Self>, listener: tokio::net::UnixListener) {
        loop {
            let conn = match listener.accept().await {
                Ok((c, _)) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting on the handover socket failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let sock = match conn.into_std().and_then(|s| s.set_nonblocking(false).map(|()| s)) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "a handover connection");
                    continue;
                }
            };
            if self.hand_over(&sock).await {
                return;
            }
        }
    }

    /// Hands every session to the successor on `sock`; `false`: this plugin keeps them all.
    async fn hand_over(&self, sock: &std::os::unix::net::UnixStream) -> bool {
        if !tokio::task::block_in_place(|| takeover::asks_takeover(sock)) {
            return false;
        }
        let started = Instant::now();
        let mut state = self.state.lock().await;
        tracing::info!(sessions = state.sessions.len(), "a successor asks for the node's sessions: quiescing them");
        let mut quiescing = tokio::task::JoinSet::new();
        for (key, s) in state.sessions.drain() {
            let info = s.info(&key);
            quiescing.spawn(async move { (info, s.mount.quiesce(takeover::QUIESCE_WAIT).await) });
        }
        let mut quiesced: Vec<(SessionInfo, Quiesced)> = Vec::new();
        let mut failed: Vec<(SessionInfo, Mount, MountError)> = Vec::new();
        while let Some(r) = quiescing.join_next().await {
            match r {
                Ok((info, Ok(q))) => quiesced.push((info, q)),
                Ok((info, Err((m, e)))) => failed.push((info, m, e)),
                Err(e) => tracing::error!(error = %e, "a quiesce task failed; its session is lost"),
            }
        }
        let paused = started.elapsed();
        let outcome = match failed.first() {
            Some((info, _, e)) => {
                let why = format!("session {} (volume {}) would not quiesce: {e}", info.key, info.volume_id);
                tokio::task::block_in_place(|| takeover::refuse(sock, &why));
                Err(why)
            }
            None => {
                let lock = state.lock.as_ref().expect("the owner holds the lock until it hands over");
                tokio::task::block_in_place(|| takeover::give(sock, lock, &quiesced))
            }
        };
        match outcome {
            Ok(()) => {
                for (_, q) in quiesced {
                    q.release();
                }
                state.targets.clear();
                state.lock = None;
                self.handed.send_replace(true);
                tracing::info!(paused = ?paused, took = ?started.elapsed(), "handed every session to the successor");
                true
            }
            Err(why) => {
                tracing::error!(why, "the successor did not take the sessions over; serving them on");
                for (info, q) in quiesced {
                    state.insert(info, q.resume());
                }
                for (info, m, _) in failed {
                    state.insert(info, m);
                }
                false
            }
        }
    }

    /// Checks a publish request and works out its session.
    fn check(&self, req: &csi::NodePublishVolumeRequest) -> CsiResult<Publish> {
        if req.volume_id.is_empty() {
            return Err(CsiError::InvalidArgument("volume_id is missing".into()));
        }
        if req.target_path.is_empty() {
            return Err(CsiError::InvalidArgument("target_path is missing".into()));
        }
        let cap = req
            .volume_capability
            .as_ref()
            .ok_or_else(|| CsiError::InvalidArgument("volume_capability is missing".into()))?;
        let (mount, ro_mode) = caps::check(cap).map_err(CsiError::InvalidArgument)?;
        let read_only = req.readonly || ro_mode;
        let mut source = None;
        let mut flags: Vec<String> = Vec::new();
        for (k, v) in &req.volume_context {
            match k.as_str() {
                CONTEXT_SOURCE => source = Some(v.as_str()),
                CONTEXT_AT_TIME => flags.push(format!("at_time={v}")),
                k if k.starts_with("csi.storage.k8s.io/") || k.starts_with("storage.kubernetes.io/") => {}
                k => {
                    return Err(CsiError::InvalidArgument(format!(
                        "unknown volumeAttributes key {k:?}: stratusfs knows source and atTime; other options go in mountOptions"
                    )));
                }
            }
        }
        let source_text = source.ok_or_else(|| {
            CsiError::InvalidArgument(
                "volumeAttributes.source is missing: give stratusfs://HOST:PORT/VOLUME[/SUBPATH]".into(),
            )
        })?;
        let source: Source =
            source_text.parse().map_err(|e| CsiError::InvalidArgument(format!("volumeAttributes.source: {e}")))?;
        for flag in mount.mount_flags.iter().flat_map(|f| f.split(',')).map(str::trim).filter(|f| !f.is_empty()) {
            let key = flag.split_once('=').map(|(k, _)| k).unwrap_or(flag);
            if DRIVER_OPTIONS.contains(&key) {
                return Err(CsiError::InvalidArgument(format!(
                    "mount option {flag:?} is set by the driver (from the publish Secret and the chart, or for crash safety), not by mountOptions"
                )));
            }
            flags.push(flag.to_string());
        }
        let token = req.secrets.get("token").filter(|t| !t.is_empty()).ok_or_else(|| {
            CsiError::InvalidArgument(
                "the node-publish Secret has no `token` (give nodePublishSecretRef a Secret with token and ca.crt)"
                    .into(),
            )
        })?;
        let ca_pem = req.secrets.get("ca.crt").filter(|t| !t.is_empty()).ok_or_else(|| {
            CsiError::InvalidArgument("the node-publish Secret has no `ca.crt` (the CA of the metadata server)".into())
        })?;
        let group = match mount.volume_mount_group.as_str() {
            "" => None,
            g => Some(g.parse::<u32>().map_err(|_| {
                CsiError::InvalidArgument(format!(
                    "volume_mount_group {g:?}: give a numeric group id (a pod's fsGroup)"
                ))
            })?),
        };
        let mut sorted = flags.clone();
        sorted.sort();
        // The encryption secret is part of what a session is: a publish without it (or with
        // another) never shares a session that was opened with it.
        let encryption_secret = req.secrets.get("encryptionSecret").filter(|s| !s.is_empty()).cloned();
        let mut h = Sha256::new();
        let group_text = group.map(|g| g.to_string()).unwrap_or_default();
        let secret_text = encryption_secret.as_deref().unwrap_or_default();
        for part in [source_text, token, &sorted.join(","), &group_text, secret_text] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        h.update([read_only as u8]);
        let key = hex::encode(&h.finalize()[..12]);
        let dir = self.cfg.state_dir.join("sessions").join(&key);
        flags.push("allow_other".into());
        flags.push("nodelegations".into());
        if read_only {
            flags.push("ro".into());
        }
        if let Some(cache) = &self.cfg.cache_dir {
            flags.push(format!("disk_cache_dir={}", cache.join(&key).display()));
            flags.push(format!("disk_cache_mib={}", self.cfg.cache_mib));
        }
        if encryption_secret.is_some() {
            flags.push(format!("encryption_secret_file={}", dir.join("encryption-secret").display()));
        }
        let options =
            MountOptions::parse(&flags).map_err(|e| CsiError::InvalidArgument(format!("mountOptions: {e}")))?;
        Ok(Publish {
            source,
            key,
            dir,
            options,
            token: token.clone(),
            ca_pem: ca_pem.clone(),
            encryption_secret,
            group,
            read_only,
        })
    }

    /// Starts a session for `p` under the state directory.
    async fn start_session(&self, p: &Publish, volume_id: &str) -> CsiResult<Session> {
        let dir = p.dir.clone();
        let mnt = dir.join("mnt");
        let internal = |what: &str, e: std::io::Error| CsiError::Internal(format!("{what} {}: {e}", dir.display()));
        std::fs::create_dir_all(&mnt).map_err(|e| internal("making", e))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| internal("securing", e))?;
        if let Some(secret) = &p.encryption_secret {
            write_private(&dir.join("encryption-secret"), secret).map_err(|e| internal("writing the secret in", e))?;
        }
        let mut source = p.source.clone();
        let host = source.server.rsplit_once(':').map(|(h, _)| h.to_string()).unwrap_or_default();
        if let Some(dial) = self.cfg.service_addresses.get(&source.server) {
            source.server = dial.clone();
        }
        let trust = ClientTrust { ca_pem: Some(p.ca_pem.clone()), server_name: Some(host), ..Default::default() };
        let spec = MountSpec {
            source,
            mountpoint: mnt.clone(),
            options: p.options.clone(),
            credentials: Credentials { token: p.token.clone(), trust },
        };
        let mount = match Mount::start(spec).await {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(CsiError::from_mount(e));
            }
        };
        if let Some(gid) = p.group
            && !p.read_only
            && let Err(e) = apply_group(&mnt, gid)
        {
            tracing::warn!(mount = %mnt.display(), gid, error = %e, "giving the volume's root to the pod's fsGroup failed");
        }
        tracing::info!(session = %p.key, volume = volume_id, source = %p.source, read_only = p.read_only, "session started");
        Ok(Session { mount, dir, targets: BTreeSet::new(), volume_id: volume_id.to_string() })
    }

    async fn publish(&self, req: csi::NodePublishVolumeRequest) -> CsiResult<()> {
        let p = self.check(&req)?;
        let target = PathBuf::from(&req.target_path);
        let mut state = self.state.lock().await;
        self.serving()?;
        // What is at the target now (mountinfo read once): a directory to mount on, this publish
        // done already, something else, or a target of a session that died with an earlier
        // process (ENOTCONN, or a stratusfs mount this process does not know: the kernel may
        // still answer a stat from its cache for a moment).
        let fstype = mount_type(&target);
        let known = state.targets.get(&target).cloned();
        let stat = std::fs::metadata(&target);
        let stale = match &stat {
            Err(e) => e.raw_os_error() == Some(libc::ENOTCONN),
            Ok(m) => m.is_dir() && known.is_none() && fstype.as_deref() == Some(FSTYPE),
        };
        if stale {
            tracing::warn!(target = %target.display(), "detaching a target left by an earlier node plugin before publishing it again");
            detach(&target)?;
            state.targets.remove(&target);
        } else {
            match stat {
                Ok(m) if !m.is_dir() => {
                    return Err(CsiError::InvalidArgument(format!(
                        "target_path {} is not a directory: a stratusfs volume is mounted on a directory",
                        target.display()
                    )));
                }
                Ok(_) if fstype.is_some() && known.as_deref() == Some(p.key.as_str()) => return Ok(()),
                Ok(_) if fstype.is_some() => {
                    return Err(CsiError::AlreadyExists(match known {
                        Some(_) => format!(
                            "target_path {} is published already with another source, token, options or read-only flag",
                            target.display()
                        ),
                        None => format!("target_path {} is a mount point of something else already", target.display()),
                    }));
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    std::fs::create_dir(&target).map_err(|e| {
                        CsiError::InvalidArgument(format!("making target_path {}: {e}", target.display()))
                    })?;
                }
                Err(e) => return Err(CsiError::Internal(format!("target_path {}: {e}", target.display()))),
            }
        }
        if !state.sessions.contains_key(&p.key) {
            let s = self.start_session(&p, &req.volume_id).await?;
            self.watch(&p.key, &s);
            state.sessions.insert(p.key.clone(), s);
        }
        let from = state.sessions[&p.key].dir.join("mnt");
        let bound = nix::mount::mount(Some(&from), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>).and_then(
            |()| match p.read_only {
                true => nix::mount::mount(
                    None::<&str>,
                    &target,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None::<&str>,
                ),
                false => Ok(()),
            },
        );
        if let Err(e) = bound {
            let _ = nix::mount::umount2(&target, MntFlags::MNT_DETACH);
            if state.sessions[&p.key].targets.is_empty() {
                self.end(&mut state, &p.key).await;
            }
            return Err(CsiError::Internal(format!("bind-mounting the session onto {}: {e}", target.display())));
        }
        let session = state.sessions.get_mut(&p.key).expect("inserted above");
        session.targets.insert(target.clone());
        let shared = session.targets.len() > 1;
        self.keep(&p.key, session);
        state.targets.insert(target.clone(), p.key.clone());
        tracing::info!(volume = %req.volume_id, target = %target.display(), session = %p.key, shared, "published");
        Ok(())
    }

    /// Ends a session (its last target is gone).
    async fn end(&self, state: &mut State, key: &str) {
        let Some(s) = state.sessions.remove(key) else { return };
        self.holder.forget(key);
        if let Err(e) = s.mount.unmount().await {
            tracing::warn!(session = key, error = %e, "ending the session's mount failed");
        }
        if let Err(e) = std::fs::remove_dir_all(&s.dir) {
            tracing::warn!(dir = %s.dir.display(), error = %e, "removing the session's directory failed");
        }
        if let Some(cache) = &self.cfg.cache_dir {
            let _ = std::fs::remove_dir_all(cache.join(key));
        }
        tracing::info!(session = key, volume = %s.volume_id, "session ended (its last target was unpublished)");
    }

    async fn unpublish(&self, req: csi::NodeUnpublishVolumeRequest) -> CsiResult<()> {
        if req.volume_id.is_empty() {
            return Err(CsiError::InvalidArgument("volume_id is missing".into()));
        }
        if req.target_path.is_empty() {
            return Err(CsiError::InvalidArgument("target_path is missing".into()));
        }
        let target = PathBuf::from(&req.target_path);
        let mut state = self.state.lock().await;
        self.serving()?;
        if mounted(&target) || std::fs::metadata(&target).is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN)) {
            detach(&target)?;
        }
        match std::fs::remove_dir(&target) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(CsiError::Internal(format!("removing target_path {}: {e}", target.display()))),
        }
        if let Some(key) = state.targets.remove(&target) {
            let last = state.sessions.get_mut(&key).is_some_and(|s| {
                s.targets.remove(&target);
                s.targets.is_empty()
            });
            if last {
                self.end(&mut state, &key).await;
            } else if let Some(s) = state.sessions.get(&key) {
                self.keep(&key, s);
            }
        }
        tracing::info!(volume = %req.volume_id, target = %target.display(), "unpublished");
        Ok(())
    }

    fn stats(&self, req: csi::NodeGetVolumeStatsRequest) -> CsiResult<csi::NodeGetVolumeStatsResponse> {
        if req.volume_id.is_empty() {
            return Err(CsiError::InvalidArgument("volume_id is missing".into()));
        }
        if req.volume_path.is_empty() {
            return Err(CsiError::InvalidArgument("volume_path is missing".into()));
        }
        let path = Path::new(&req.volume_path);
        let abnormal = |message: String| csi::NodeGetVolumeStatsResponse {
            usage: Vec::new(),
            volume_condition: Some(csi::VolumeCondition { abnormal: true, message }),
        };
        match std::fs::metadata(path) {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(CsiError::NotFound(format!("volume_path {} does not exist", path.display())));
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
                return Ok(abnormal(format!(
                    "the mount at {} lost its session (the node plugin restarted); the pod must be restarted to mount it again",
                    path.display()
                )));
            }
            _ => {}
        }
        let st = match nix::sys::statvfs::statvfs(path) {
            Ok(st) => st,
            Err(e) => return Ok(abnormal(format!("statfs of {}: {e}", path.display()))),
        };
        let frsize = st.fragment_size() as i64;
        let (blocks, bfree, bavail) = (st.blocks() as i64, st.blocks_free() as i64, st.blocks_available() as i64);
        let (files, ffree) = (st.files() as i64, st.files_free() as i64);
        use csi::volume_usage::Unit;
        Ok(csi::NodeGetVolumeStatsResponse {
            usage: vec![
                csi::VolumeUsage {
                    total: blocks * frsize,
                    available: bavail * frsize,
                    used: (blocks - bfree) * frsize,
                    unit: Unit::Bytes as i32,
                },
                csi::VolumeUsage { total: files, available: ffree, used: files - ffree, unit: Unit::Inodes as i32 },
            ],
            volume_condition: Some(csi::VolumeCondition { abnormal: false, message: String::new() }),
        })
    }

    /// The live sessions and their targets, for metrics.
    pub async fn published(&self) -> Vec<(String, usize, fs_core::MountStats)> {
        let state = self.state.lock().await;
        state.sessions.values().map(|s| (s.volume_id.clone(), s.targets.len(), s.mount.stats())).collect()
    }
}

/// Takes over the sessions the fd holder kept for a crashed predecessor.
async fn recover(holder: &Holder, state: &mut State) {
    let kept = match tokio::task::block_in_place(|| holder.list()) {
        Ok(k) => k,
        Err(e) => {
            tracing::error!(error = %e, "reading the sessions the fd holder kept failed; they end");
            return;
        }
    };
    for k in kept {
        let (key, lost) = (k.info.key.clone(), k.unsaved.len());
        let started = Instant::now();
        match Mount::adopt_after_crash(k.handover, &k.unsaved).await {
            Ok(m) => {
                tracing::info!(session = %key, volume = %k.info.volume_id, targets = k.info.targets.len(), files_with_lost_writes = lost, took = ?started.elapsed(), "took a session over from the fd holder after a crash");
                state.insert(k.info, m);
            }
            Err(e) => {
                tracing::error!(session = %key, error = %e, "a session the fd holder kept cannot be served again; it ends (its pods' mounts answer ENOTCONN)");
                holder.forget(&key);
            }
        }
    }
}

/// Detaches the session mounts a crashed predecessor left (but those taken over from the fd
/// holder, `adopted`) and removes their directories.
fn detach_leftovers(sessions: &Path, adopted: &HashMap<String, Session>) {
    for entry in std::fs::read_dir(sessions).into_iter().flatten().flatten() {
        if adopted.contains_key(entry.file_name().to_string_lossy().as_ref()) {
            continue;
        }
        let dir = entry.path();
        let mnt = dir.join("mnt");
        if mounted(&mnt) {
            tracing::warn!(mount = %mnt.display(), "a session left by a node plugin that is gone: detaching it");
            let _ = nix::mount::umount2(&mnt, MntFlags::MNT_DETACH);
        }
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "removing an old session's directory failed");
        }
    }
}

/// Makes a session's root belong to the pod's fsGroup, as kubelet would (group, setgid, group
/// write), without walking the tree: new files inherit the group.
fn apply_group(root: &Path, gid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(root)?;
    if m.gid() != gid {
        std::os::unix::fs::chown(root, None, Some(gid))?;
    }
    let mode = m.mode() & 0o7777;
    if mode & 0o2070 != 0o2070 {
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(mode | 0o2070))?;
    }
    Ok(())
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(text.as_bytes())
}

/// Unmounts a target (lazily when busy or stale).
fn detach(target: &Path) -> CsiResult<()> {
    match nix::mount::umount2(target, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) => Ok(()), // not mounted
        Err(_) => nix::mount::umount2(target, MntFlags::MNT_DETACH)
            .map_err(|e| CsiError::Internal(format!("unmounting {}: {e}", target.display()))),
    }
}

/// The filesystem type of a session's mount (and of the targets bound to it).
const FSTYPE: &str = "fuse.stratusfs";

/// Whether `path` is a mount point (by /proc/self/mountinfo: works for a stale FUSE mount too).
fn mounted(path: &Path) -> bool {
    mount_type(path).is_some()
}

/// The filesystem type of what is mounted at `path` (the topmost mount), if anything is.
fn mount_type(path: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_string_lossy();
    info.lines()
        .rev()
        .filter(|l| l.split(' ').nth(4).is_some_and(|p| unescape(p) == want))
        .find_map(|l| l.split(" - ").nth(1).and_then(|rest| rest.split(' ').next()).map(String::from))
}

/// mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn rpc_capability(t: rpc::Type) -> NodeServiceCapability {
    NodeServiceCapability { r#type: Some(Type::Rpc(csi::node_service_capability::Rpc { r#type: t as i32 })) }
}

#[tonic::async_trait]
impl Node for Arc<NodeService> {
    async fn node_publish_volume(
        &self,
        req: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        self.publish(req.into_inner()).await?;
        Ok(Response::new(csi::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        self.unpublish(req.into_inner()).await?;
        Ok(Response::new(csi::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        req: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        let me = self.clone();
        let req = req.into_inner();
        // statfs goes to the metadata server: off the async threads.
        let r = tokio::task::spawn_blocking(move || me.stats(req))
            .await
            .map_err(|e| CsiError::Internal(format!("volume stats: {e}")))?;
        Ok(Response::new(r?))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        let capabilities = [
            rpc::Type::GetVolumeStats,
            rpc::Type::VolumeCondition,
            rpc::Type::VolumeMountGroup,
            rpc::Type::SingleNodeMultiWriter,
        ]
        .into_iter()
        .map(rpc_capability)
        .collect();
        Ok(Response::new(csi::NodeGetCapabilitiesResponse { capabilities }))
    }

    async fn node_get_info(
        &self,
        _: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: self.cfg.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_read() {
        assert_eq!(unescape("/var/lib/a\\040b"), "/var/lib/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(mount_type(Path::new("/proc")).as_deref(), Some("proc"));
        assert!(!mounted(Path::new("/proc/self")));
    }
}
