//! The filesystem's own small types: who calls, what a mount's options say to the filesystem,
//! and the arguments of calls that change attributes, make nodes and take locks.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::wire::pb;

/// The caller of an operation (from the FUSE request header).
#[derive(Clone, Copy, Debug, Default)]
pub struct Ctx {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// The FUSE request's `unique` (without the resend bit; 0: not a kernel request). A change's
    /// request number comes from it, so a request the kernel resends after a crash of the process
    /// that read it (FUSE_NOTIFY_RESEND) is answered from the server's record of the first one,
    /// not applied twice.
    pub unique: u64,
}

/// Mount options that change what the filesystem does (kernel-side options live in the mount).
/// The defaults here are the one place they are set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FsConfig {
    /// How long the kernel may cache attributes.
    pub attr_ttl: Duration,
    /// How long the kernel may cache names (lookups).
    pub entry_ttl: Duration,
    /// How long the kernel may cache that a name does not exist (0: not at all; another mount's
    /// create of the name is seen only after it).
    pub negative_ttl: Duration,
    /// Memory for decoded blocks (L1).
    pub cache_bytes: usize,
    /// Unflushed bytes per file before write() commits them (bounds memory).
    pub dirty_limit: usize,
    /// Blocks read ahead of a sequential reader.
    pub readahead_blocks: u64,
    /// Blocks a random reader's misses fetch whole in the background at once (`prefetch=N`;
    /// 0: a miss fetches only the chunks it reads).
    pub prefetch_blocks: usize,
    /// Block uploads and downloads in flight at once.
    pub io_concurrency: usize,
    /// How long a block request retries a store that fails or cannot be reached (with backoff
    /// and jitter) before the call that waits for it gets EIO; unsaved writes stay in the mount.
    pub store_wait: Duration,
    /// Where the L2 disk cache keeps stored bytes of blocks (`disk_cache_dir`; none: no L2).
    pub disk_cache_dir: Option<std::path::PathBuf>,
    /// The most bytes L2 keeps (`disk_cache_mib`).
    pub disk_cache_bytes: u64,
    /// Permission bits taken away from every new inode (the `umask` mount option).
    pub umask: u32,
    /// Ask for directory delegations where files are created in bursts (`nodelegations` turns
    /// it off; docs/write-back-metadata.md).
    pub delegations: bool,
    /// The file holding an encrypted volume's secret (`encryption_secret_file`).
    pub encryption_secret_file: Option<std::path::PathBuf>,
    /// The secret itself, for a library caller that has it in memory (the CSI driver's Secret);
    /// never serialised, so a handover does not carry it.
    #[serde(skip)]
    pub encryption_secret: Option<crate::crypto::Secret>,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            attr_ttl: Duration::from_secs(1),
            entry_ttl: Duration::from_secs(1),
            negative_ttl: Duration::ZERO,
            cache_bytes: 256 << 20,
            dirty_limit: 64 << 20,
            readahead_blocks: 4,
            prefetch_blocks: 2,
            io_concurrency: 16,
            store_wait: Duration::from_secs(60),
            disk_cache_dir: None,
            disk_cache_bytes: 10 << 30,
            umask: 0,
            delegations: true,
            encryption_secret_file: None,
            encryption_secret: None,
        }
    }
}

/// What a successful open tells the kernel.
pub struct Opened {
    pub fh: u64,
    /// The file changed since this mount last saw it: the kernel must drop cached pages and
    /// attributes (close-to-open consistency).
    pub changed: bool,
}

/// A time a setattr sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSet {
    /// The server's clock.
    Now,
    At(pb::Timespec),
}

/// What a setattr changes (`None`: unchanged).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// Permission bits (07777).
    pub perm: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// A truncate (or extension) to this size.
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    pub ctime: Option<pb::Timespec>,
    /// The open handle a truncate comes through (0: none).
    pub fh: u64,
}

impl SetAttr {
    /// The request the server takes for this change of `ino`.
    pub(crate) fn request(&self, ctx: Option<pb::Context>, ino: u64) -> pb::SetAttrRequest {
        let at = |t: Option<TimeSet>| match t {
            Some(TimeSet::At(ts)) => Some(ts),
            _ => None,
        };
        pb::SetAttrRequest {
            ctx,
            ino,
            perm: self.perm.map(|p| p & 0o7777),
            uid: self.uid,
            gid: self.gid,
            size: self.size,
            atime: at(self.atime),
            atime_now: self.atime == Some(TimeSet::Now),
            mtime: at(self.mtime),
            mtime_now: self.mtime == Some(TimeSet::Now),
            ctime: self.ctime,
            open_id: self.fh,
        }
    }
}

/// A node mknod or mkdir makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewNode {
    pub kind: pb::FileKind,
    /// Permission bits as the caller asked (07777), before any umask.
    pub perm: u32,
    /// The caller's umask (the kernel leaves it to us: a default ACL replaces it).
    pub umask: u32,
    /// Device number of a block or character device.
    pub rdev: u64,
}

/// A lock request: fcntl (POSIX, per owner and range) or flock (BSD, whole file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockSpec {
    /// The lock owner the kernel names (per process for POSIX locks, per open file for flock).
    pub owner: u64,
    pub kind: pb::LockKind,
    pub typ: pb::LockType,
    pub start: u64,
    /// Inclusive; `u64::MAX`: to the end of the file.
    pub end: u64,
    /// F_SETLKW: wait until the lock is granted.
    pub wait: bool,
}

impl LockSpec {
    /// The request the server takes for this lock on `ino` through handle `fh`.
    pub(crate) fn request(&self, ctx: Option<pb::Context>, ino: u64, fh: u64) -> pb::LockRequest {
        pb::LockRequest {
            ctx,
            ino,
            owner: self.owner,
            kind: self.kind as i32,
            r#type: self.typ as i32,
            start: self.start,
            end: self.end,
            wait: self.wait,
            open_id: fh,
        }
    }
}
