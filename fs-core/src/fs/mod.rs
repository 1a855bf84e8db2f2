//! The filesystem a mount serves, independent of FUSE: namespace calls go to the metadata server
//! over the session; file data is read and written as blocks in the block store ([`data`]).
//!
//! Every method takes the caller's credentials ([`Ctx`]) and the filesystem's own small types
//! ([`types`]) and returns `Result<_, i32>` (errno), so the FUSE adapter only translates. Inodes
//! are the server's inode numbers (the adapter maps FUSE's root node to [`StratusFs::root`]);
//! open file handles are the server's open ids. Both make the mount state transferable: a
//! process that adopts a live FUSE connection needs the session and the open handles
//! ([`StratusFs::handles`]), nothing else (docs/library.md, "Handover").
//!
//! - [`namespace`]: lookups, attributes, names, directories, xattrs;
//! - [`files`]: opens, reads, writes, fsync, locks;
//! - [`data`]: a file's blocks in this mount (write buffers, the block map, commits);
//! - [`deleg`]: directory delegations (creates written back).

mod crash;
pub mod data;
pub mod deleg;
mod files;
pub mod handover;
mod namespace;
pub mod types;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use parking_lot::Mutex;

use crate::blockstore::BackendSpec;
use crate::crypto::VolumeKeys;
use crate::metaclient::Session;
use crate::wire::error::MetaError;
use crate::wire::pb;
pub use crash::UnsavedWatcher;

/// The bit that marks a request number derived from a FUSE request's `unique` (the session's own
/// numbers start from the clock in nanoseconds, below 2^62 until the year 2116).
const FUSE_REQUEST_NUMBER: u64 = 1 << 62;
use data::OpenFile;
pub use data::WriteData;
pub use types::{Ctx, FsConfig, LockSpec, NewNode, Opened, SetAttr, TimeSet};

pub(crate) use crate::FsResult;

/// The one mapping from a metadata-server error to an errno (logged when it is the server's or
/// the network's fault).
pub fn errno_of(s: tonic::Status) -> i32 {
    let e = MetaError::from_status(&s);
    let errno = e.errno();
    if matches!(e, MetaError::Internal(_)) || errno == libc::EIO {
        tracing::warn!(error = %e, "metadata request failed");
    } else {
        tracing::debug!(error = %e, errno, "metadata request refused");
    }
    errno
}

/// Files whose state a mount keeps after their last close (to keep the kernel's page cache
/// when they did not change); past this, closed files are forgotten.
const MAX_IDLE_FILES: usize = 100_000;

/// Longest symlink target (the server's limit; on an encrypted volume it applies to the plaintext).
pub const PATH_MAX: usize = crate::server::ns::MAX_SYMLINK;

/// Longest name on a plain volume (encrypted volumes check the plaintext against the same limit).
pub const NAME_MAX: usize = 255;

fn check_name(name: &[u8]) -> FsResult<()> {
    if name.len() > NAME_MAX { Err(libc::ENAMETOOLONG) } else { Ok(()) }
}

/// The keys of `volume` opened with the secret `cfg` gives, when it is encrypted. A secret is
/// needed exactly when the volume is encrypted; a wrong one fails here, before anything is
/// written. The key derivation is deliberately slow (Argon2id, a fraction of a second).
pub fn volume_keys(volume: &pb::VolumeInfo, cfg: &FsConfig) -> Result<Option<Arc<VolumeKeys>>, String> {
    let secret = match (&cfg.encryption_secret, &cfg.encryption_secret_file) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(path)) => Some(crate::crypto::Secret::read(path).map_err(|e| e.to_string())?),
        (None, None) => None,
    };
    let name = &volume.name;
    match (&volume.encryption, secret) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(format!(
            "volume {name:?} is encrypted: give its secret with the mount option encryption_secret_file=PATH"
        )),
        (None, Some(_)) => Err(format!(
            "volume {name:?} is not encrypted, yet an encryption secret was given: mount it without \
             encryption_secret_file (a volume is encrypted from its creation, `stratusfs admin volume create --encrypt`)"
        )),
        (Some(env), Some(secret)) => {
            let started = std::time::Instant::now();
            let keys =
                VolumeKeys::open(env, secret.expose(), &volume.uuid).map_err(|e| format!("volume {name:?}: {e}"))?;
            tracing::info!(
                volume = %name,
                key_id = %keys.key_id(),
                kdf_ms = started.elapsed().as_millis() as u64,
                "encrypted volume: its data key opened"
            );
            Ok(Some(Arc::new(keys)))
        }
    }
}

/// Whether xattr `name` is a POSIX ACL (kept open: the server checks permissions with it).
fn is_acl(name: &[u8]) -> bool {
    name == crate::server::acl::ACCESS || name == crate::server::acl::DEFAULT
}

/// What [`StratusFs::stored_value`] binds a symlink's target to. The inode is not known before
/// the server makes it, so targets are sealed under inode 0: one symlink's target copied over
/// another's by someone with the server's disk opens (as that target), any other change fails.
const SYMLINK: &[u8] = b"symlink";

/// What the server answered to an open or create.
struct OpenedReply<'a> {
    open_id: u64,
    attr: &'a pb::Attr,
    quota_limited: bool,
    /// The open created the file.
    created: bool,
}

/// An open file handle: its inode, and which POSIX lock owners used it (their locks go when it
/// is released).
#[derive(Default)]
struct Handle {
    ino: u64,
    lock_owners: HashSet<u64>,
}

pub struct StratusFs {
    pub session: Arc<Session>,
    pub volume: pb::VolumeInfo,
    pub cfg: FsConfig,
    root: u64,
    /// An encrypted volume's keys: names, symlink targets and xattr values are sealed here.
    keys: Option<Arc<VolumeKeys>>,
    data: data::DataPath,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    handles: Mutex<HashMap<u64, Handle>>,
    /// Inodes without a security.capability xattr, and when the server said so.
    no_capability: Mutex<HashMap<u64, std::time::Instant>>,
    /// Directories this session holds and files created under them ([`deleg`]).
    deleg: Mutex<deleg::State>,
    /// One Apply at a time.
    applying: tokio::sync::Mutex<()>,
    /// This filesystem, once it is shared ([`StratusFs::into_arc`]): work that must not be
    /// cancelled half way runs as a task of its own.
    me: std::sync::OnceLock<std::sync::Weak<StratusFs>>,
    /// Unsaved writes told to a watcher, and writes lost in a crash ([`crash`]).
    crash: Mutex<crash::CrashState>,
    /// Lost writes reported (EIO answers over writes a crashed process held).
    lost_reported: std::sync::atomic::AtomicU64,
}

impl StratusFs {
    /// The filesystem of the session's volume; `keys`: an encrypted volume's, opened with
    /// [`volume_keys`].
    pub fn new(session: Arc<Session>, cfg: FsConfig, keys: Option<Arc<VolumeKeys>>) -> Result<StratusFs, String> {
        let volume = session.reply.volume.clone().ok_or("the server sent no volume description")?;
        let spec: BackendSpec = serde_json::from_str(&volume.backend_json)
            .map_err(|e| format!("the volume's block-store spec does not parse: {e}"))?;
        let data = data::DataPath::new(session.clone(), &volume, &spec, &cfg, keys.clone())?;
        Ok(StratusFs {
            root: session.root_ino(),
            keys,
            cfg,
            volume,
            data,
            session,
            files: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            no_capability: Mutex::new(HashMap::new()),
            deleg: Mutex::new(deleg::State::default()),
            applying: tokio::sync::Mutex::new(()),
            me: std::sync::OnceLock::new(),
            crash: Mutex::new(Default::default()),
            lost_reported: Default::default(),
        })
    }

    /// Makes `path` (relative to the session's root) the mount's root.
    pub async fn set_root_path(&mut self, path: &str) -> Result<(), String> {
        let mut ino = self.root;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            let name = self.stored_name(ino, part.as_bytes()).map_err(|_| format!("{part:?}: name too long"))?;
            let req = pb::NameRequest { ctx: self.ctx(Ctx::default()), parent: ino, name: name.into_owned() };
            let r = self.rpc().lookup(req).await;
            let a = r.map_err(|s| MetaError::from_status(&s).to_string())?.into_inner().attr.unwrap_or_default();
            if a.kind() != pb::FileKind::Directory {
                return Err(format!("{part:?} is not a directory"));
            }
            ino = a.ino;
        }
        self.root = ino;
        Ok(())
    }

    /// Shares the filesystem (what a mount does with it).
    pub fn into_arc(self) -> Arc<StratusFs> {
        let fs = Arc::new(self);
        let _ = fs.me.set(Arc::downgrade(&fs));
        fs
    }

    /// The inode the mount shows as its root.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// Makes inode `ino` the mount's root (an adopted mount keeps its root even if its path was
    /// renamed meanwhile).
    pub fn set_root(&mut self, ino: u64) {
        self.root = ino;
    }

    /// The size of the pieces a write's bytes are best handed over in: the block store's chunk,
    /// so aligned pieces become the file's chunks without a copy ([`WriteData::pieces`]).
    pub fn write_piece(&self) -> usize {
        data::dirty::CS
    }

    pub fn block_size(&self) -> u64 {
        self.volume.block_size as u64
    }

    /// L1 cache counters: (hits, fetches).
    pub fn cache_stats(&self) -> (u64, u64) {
        self.data.cache_stats()
    }

    /// L2 counters: (hits, misses, damaged entries), if the mount has one.
    pub fn disk_cache_stats(&self) -> Option<(u64, u64, u64)> {
        self.data.disk_cache_stats()
    }

    fn ctx(&self, c: Ctx) -> Option<pb::Context> {
        Some(self.session.ctx(c.uid, c.gid, c.pid))
    }

    /// The context of the one change a kernel request makes (create, mkdir, unlink, rename,
    /// link, symlink, xattrs): numbered after the FUSE request (`Ctx::unique`), so the same request
    /// resent after a crash is answered from the server's record instead of applied again. Only
    /// one call per kernel request may use it.
    fn ctx_once(&self, c: Ctx) -> Option<pb::Context> {
        match c.unique {
            0 => self.ctx(c),
            u => Some(self.session.ctx_numbered(c.uid, c.gid, c.pid, FUSE_REQUEST_NUMBER | u)),
        }
    }

    /// Name `name` in directory `parent` as the server keeps it: checked against [`NAME_MAX`],
    /// then, on an encrypted volume, sealed (AES-SIV, bound to `parent`). `.` and `..` stay.
    fn stored_name<'a>(&self, parent: u64, name: &'a [u8]) -> FsResult<std::borrow::Cow<'a, [u8]>> {
        check_name(name)?;
        match &self.keys {
            Some(k) if name != b"." && name != b".." => Ok(k.seal_name(parent, name).into()),
            _ => Ok(name.into()),
        }
    }

    /// A name the server listed in directory `parent`, opened on an encrypted volume (one that
    /// does not open is EIO and a log line).
    fn open_name(&self, parent: u64, stored: Vec<u8>) -> FsResult<Vec<u8>> {
        match &self.keys {
            Some(k) if stored != b"." && stored != b".." => k.open_name(parent, &stored).map_err(|e| {
                tracing::error!(dir = parent, error = %e, "a name in the directory does not open; answering EIO");
                libc::EIO
            }),
            _ => Ok(stored),
        }
    }

    /// A value of inode `ino` that `what` names (a symlink target, an xattr) as the server keeps
    /// it: sealed on an encrypted volume, except POSIX ACLs (the server and kernel read them).
    fn stored_value(&self, ino: u64, what: &[u8], value: &[u8]) -> FsResult<Vec<u8>> {
        match &self.keys {
            Some(k) if !is_acl(what) => k.seal_value(ino, what, value).map_err(|e| {
                tracing::error!(ino, error = %e, "sealing a value failed");
                libc::EIO
            }),
            _ => Ok(value.to_vec()),
        }
    }

    /// What [`Self::stored_value`] stored (one that does not open is EIO and a log line).
    fn open_value(&self, ino: u64, what: &[u8], stored: Vec<u8>) -> FsResult<Vec<u8>> {
        match &self.keys {
            Some(k) if !is_acl(what) => k.open_value(ino, what, &stored).map_err(|e| {
                tracing::error!(ino, what = %String::from_utf8_lossy(what), error = %e, "a stored value does not open; answering EIO");
                libc::EIO
            }),
            _ => Ok(stored),
        }
    }

    fn rpc(&self) -> crate::metaclient::MetaRpc {
        self.session.rpc.clone()
    }

    /// The data state of an inode (created on first use).
    fn file(&self, ino: u64) -> Arc<OpenFile> {
        self.files.lock().entry(ino).or_insert_with(|| Arc::new(OpenFile::new(ino))).clone()
    }

    fn existing_file(&self, ino: u64) -> Option<Arc<OpenFile>> {
        self.files.lock().get(&ino).cloned()
    }

    /// Voids every remembered attribute (see [`data::RecentAttrs::get`]): called after every
    /// change whose reply does not say what it did to each inode it touched. With `before` (the
    /// epoch read before the change was sent): the new epoch if no other change voided them
    /// meanwhile, so what the reply says may be remembered under it.
    fn changed_outside_data_path(&self, before: u64) -> Option<u64> {
        let prev = self.data.attrs.bump();
        (prev == before).then_some(prev + 1)
    }

    /// [`Self::changed_outside_data_path`] for a change whose reply is not remembered at all
    /// (setattr, xattrs, fallocate).
    fn void_remembered_attrs(&self) {
        self.data.attrs.bump();
    }

    /// After unlink, rmdir or rename (sent in epoch `before`): the removed or moved inode's
    /// remembered attributes are void (its link count or ctime changed), the directories the reply
    /// reports are remembered.
    fn removed_or_renamed(
        &self,
        before: u64,
        r: Result<tonic::Response<pb::ParentsReply>, tonic::Status>,
    ) -> FsResult<pb::ParentsReply> {
        let after = self.changed_outside_data_path(before);
        let r = r.map_err(errno_of)?.into_inner();
        if let Some(e) = after {
            self.data.attrs.remember(r.parent, e);
            self.data.attrs.remember(r.new_parent, e);
        }
        Ok(r)
    }

    /// Attributes as this mount sees them: the server's, with the size raised by unflushed writes.
    async fn local_attr(&self, mut a: pb::Attr) -> pb::Attr {
        if let Some(f) = self.existing_file(a.ino) {
            a.size = f.local_size(&a).await;
        }
        a
    }
}

#[cfg(test)]
mod tests;
