//! The filesystem a mount serves, independent of FUSE: namespace calls go to the metadata server
//! over the session; file data is read and written as blocks in the block store ([`file`]).
//!
//! Every method takes the caller's credentials ([`Ctx`]) and returns `Result<_, i32>` (errno), so
//! the FUSE adapter only translates. Node ids are the server's inode numbers, except that the
//! mount's root is node 1 (FUSE's root); [`StratusFs::to_server`] and [`StratusFs::to_kernel`]
//! are the one place that mapping happens. Open file handles are the server's open ids. Both
//! make the mount state transferable: a process that adopts a live FUSE connection needs nothing
//! from its predecessor but the session (see `docs/mount.md`).

pub mod blocks;
pub mod cache;
pub mod deleg;
pub mod file;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use parking_lot::Mutex;

use crate::blockstore::BackendSpec;
use crate::meta::MetaError;
use crate::meta::client::Session;
use crate::proto::pb;
use file::OpenFile;
pub use file::WriteData;

pub type FsResult<T> = Result<T, i32>;

/// The caller of an operation (from the FUSE request header).
#[derive(Clone, Copy, Debug, Default)]
pub struct Ctx {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// Mount options that change what the filesystem does (kernel-side options live in the mount).
/// The defaults here are the one place they are set.
#[derive(Clone, Debug)]
pub struct FsConfig {
    /// How long the kernel may cache attributes.
    pub attr_ttl: Duration,
    /// How long the kernel may cache names (lookups).
    pub entry_ttl: Duration,
    /// Memory for decoded blocks (L1).
    pub cache_bytes: usize,
    /// Unflushed bytes per file before write() commits them (bounds memory).
    pub dirty_limit: usize,
    /// Blocks read ahead of a sequential reader.
    pub readahead_blocks: u64,
    /// Block uploads and downloads in flight at once.
    pub io_concurrency: usize,
    /// Permission bits taken away from every new inode (the `umask` mount option).
    pub umask: u32,
    /// Ask for directory delegations where files are created in bursts (`nodelegations` turns
    /// it off; docs/write-back-metadata.md).
    pub delegations: bool,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            attr_ttl: Duration::from_secs(1),
            entry_ttl: Duration::from_secs(1),
            cache_bytes: 256 << 20,
            dirty_limit: 64 << 20,
            readahead_blocks: 4,
            io_concurrency: 16,
            umask: 0,
            delegations: true,
        }
    }
}

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

/// Longest name on a plain volume (encrypted volumes check the plaintext against the same limit).
pub const NAME_MAX: usize = 255;

fn check_name(name: &[u8]) -> FsResult<()> {
    if name.len() > NAME_MAX { Err(libc::ENAMETOOLONG) } else { Ok(()) }
}

/// What the server answered to an open or create.
struct OpenedReply<'a> {
    open_id: u64,
    attr: &'a pb::Attr,
    quota_limited: bool,
    /// The open created the file.
    created: bool,
}

/// An open file handle: which POSIX lock owners used it (their locks go when it is released).
#[derive(Default)]
struct Handle {
    lock_owners: HashSet<u64>,
}

/// What a successful open tells the kernel.
pub struct Opened {
    pub fh: u64,
    /// The file changed since this mount last saw it: the kernel must drop cached pages and
    /// attributes (close-to-open consistency).
    pub changed: bool,
}

pub struct StratusFs {
    pub session: Arc<Session>,
    pub volume: pb::VolumeInfo,
    pub cfg: FsConfig,
    root: u64,
    data: file::DataPath,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    handles: Mutex<HashMap<u64, Handle>>,
    /// Inodes without a security.capability xattr, and when the server said so.
    no_capability: Mutex<HashMap<u64, std::time::Instant>>,
    /// Directories this session holds and files created under them ([`deleg`]).
    deleg: Mutex<deleg::State>,
    /// One Apply at a time.
    applying: tokio::sync::Mutex<()>,
}

impl StratusFs {
    pub fn new(session: Arc<Session>, cfg: FsConfig) -> Result<StratusFs, String> {
        let volume = session.reply.volume.clone().ok_or("the server sent no volume description")?;
        let spec: BackendSpec = serde_json::from_str(&volume.backend_json)
            .map_err(|e| format!("the volume's block-store spec does not parse: {e}"))?;
        let data = file::DataPath::new(session.clone(), &volume, &spec, &cfg)?;
        Ok(StratusFs {
            root: session.root_ino(),
            cfg,
            volume,
            data,
            session,
            files: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            no_capability: Mutex::new(HashMap::new()),
            deleg: Mutex::new(deleg::State::default()),
            applying: tokio::sync::Mutex::new(()),
        })
    }

    /// Makes `path` (relative to the session's root) the mount's root.
    pub async fn set_root_path(&mut self, path: &str) -> Result<(), String> {
        let mut ino = self.root;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            let req = pb::NameRequest { ctx: self.ctx(Ctx::default()), parent: ino, name: part.as_bytes().to_vec() };
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

    /// Kernel node id → server inode.
    pub fn to_server(&self, nodeid: u64) -> u64 {
        if nodeid == crate::fuse::abi::ROOT_ID { self.root } else { nodeid }
    }

    /// Server inode → kernel node id.
    pub fn to_kernel(&self, ino: u64) -> u64 {
        if ino == self.root { crate::fuse::abi::ROOT_ID } else { ino }
    }

    pub fn block_size(&self) -> u64 {
        self.volume.block_size as u64
    }

    /// L1 cache counters: (hits, fetches).
    pub fn cache_stats(&self) -> (u64, u64) {
        self.data.cache_stats()
    }

    fn ctx(&self, c: Ctx) -> Option<pb::Context> {
        Some(self.session.ctx(c.uid, c.gid, c.pid))
    }

    fn rpc(&self) -> pb::meta_client::MetaClient<tonic::transport::Channel> {
        self.session.rpc.clone()
    }

    /// The data state of an inode (created on first use).
    fn file(&self, ino: u64) -> Arc<OpenFile> {
        self.files.lock().entry(ino).or_insert_with(|| Arc::new(OpenFile::new(ino))).clone()
    }

    fn existing_file(&self, ino: u64) -> Option<Arc<OpenFile>> {
        self.files.lock().get(&ino).cloned()
    }

    /// Voids every remembered attribute (see [`file::DataPath::recent_attr`]): called after every
    /// change whose reply does not say what it did to each inode it touched. With `before` (the
    /// epoch read before the change was sent): the new epoch if no other change voided them
    /// meanwhile, so what the reply says may be remembered under it.
    fn changed_outside_data_path(&self, before: u64) -> Option<u64> {
        let prev = self.data.epoch.fetch_add(1, Ordering::SeqCst);
        (prev == before).then_some(prev + 1)
    }

    /// [`Self::changed_outside_data_path`] for a change whose reply is not remembered at all
    /// (setattr, xattrs, fallocate).
    fn void_remembered_attrs(&self) {
        self.data.epoch.fetch_add(1, Ordering::SeqCst);
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
            self.data.remember_attrs(r.parent, e);
            self.data.remember_attrs(r.new_parent, e);
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

    // --- namespace ----------------------------------------------------------------------------

    pub async fn lookup(&self, c: Ctx, parent: u64, name: &[u8]) -> FsResult<pb::Attr> {
        check_name(name)?;
        if let Some(r) = self.lookup_here(self.to_server(parent), name).await {
            return r;
        }
        self.settle(&[self.to_server(parent)]).await?;
        let req = pb::NameRequest { ctx: self.ctx(c), parent: self.to_server(parent), name: name.to_vec() };
        let a = self.rpc().lookup(req).await.map_err(errno_of)?.into_inner().attr.unwrap_or_default();
        Ok(self.local_attr(a).await)
    }

    pub async fn getattr(&self, c: Ctx, ino: u64) -> FsResult<pb::Attr> {
        if let Some(a) = self.getattr_here(self.to_server(ino)).await {
            return Ok(a);
        }
        self.settle(&[self.to_server(ino)]).await?;
        // Right after this mount committed the file or changed the directory, the reply is the answer.
        if let Some(a) = self.data.recent_attr(self.to_server(ino)) {
            return Ok(a);
        }
        let r = self.rpc().get_attr(pb::InodeRequest { ctx: self.ctx(c), ino: self.to_server(ino) }).await;
        let a = r.map_err(errno_of)?.into_inner().attr.unwrap_or_default();
        Ok(self.local_attr(a).await)
    }

    pub async fn setattr(&self, c: Ctx, mut req: pb::SetAttrRequest) -> FsResult<pb::Attr> {
        req.ino = self.to_server(req.ino);
        req.ctx = self.ctx(c);
        self.settle(&[req.ino]).await?;
        let Some(size) = req.size else {
            let r = self.rpc().set_attr(req).await;
            self.void_remembered_attrs();
            let a = r.map_err(errno_of)?.into_inner().attr.unwrap_or_default();
            self.deleg.lock().noted(a.ino, None, None, Some(a));
            return Ok(self.local_attr(a).await);
        };
        // A truncate: unflushed writes go first so it applies to them too, and no write of this
        // mount slips in between.
        let f = self.file(req.ino);
        let mut st = f.lock().await;
        self.data.commit(c, &mut st, false).await?;
        let r = self.rpc().set_attr(req).await;
        self.void_remembered_attrs();
        let a = r.map_err(errno_of)?.into_inner().attr.unwrap_or_default();
        debug_assert_eq!(a.size, size);
        self.data.truncated(c, &mut st, &a).await?;
        Ok(a)
    }

    /// mknod and mkdir: `req` names the parent as the kernel does (node ids).
    pub async fn mknod(&self, c: Ctx, mut req: pb::MkNodRequest) -> FsResult<pb::Attr> {
        check_name(&req.name)?;
        req.ctx = self.ctx(c);
        req.parent = self.to_server(req.parent);
        req.perm &= !self.cfg.umask;
        let dir = req.kind() == pb::FileKind::Directory;
        self.settle(&[req.parent]).await?;
        let (parent, name) = (req.parent, req.name.clone());
        let before = self.data.epoch();
        let r = if dir { self.rpc().mk_dir(req).await } else { self.rpc().mk_nod(req).await };
        let r = self.named_in(parent, &name, r).await?;
        self.data.remember_attrs(r.parent, before);
        Ok(r.attr.unwrap_or_default())
    }

    pub async fn symlink(&self, c: Ctx, parent: u64, name: &[u8], target: &[u8]) -> FsResult<pb::Attr> {
        check_name(name)?;
        let req = pb::SymlinkRequest {
            ctx: self.ctx(c),
            parent: self.to_server(parent),
            name: name.to_vec(),
            target: target.to_vec(),
        };
        self.settle(&[req.parent]).await?;
        let before = self.data.epoch();
        let r = self.rpc().symlink(req).await;
        let r = self.named_in(self.to_server(parent), name, r).await?;
        self.data.remember_attrs(r.parent, before);
        Ok(r.attr.unwrap_or_default())
    }

    pub async fn readlink(&self, c: Ctx, ino: u64) -> FsResult<Vec<u8>> {
        let r = self.rpc().read_link(pb::InodeRequest { ctx: self.ctx(c), ino: self.to_server(ino) }).await;
        Ok(r.map_err(errno_of)?.into_inner().target)
    }

    pub async fn unlink(&self, c: Ctx, parent: u64, name: &[u8]) -> FsResult<()> {
        check_name(name)?;
        let parent = self.to_server(parent);
        if self.unlink_here(parent, name) {
            return Ok(());
        }
        self.settle(&[parent]).await?;
        let req = pb::NameRequest { ctx: self.ctx(c), parent, name: name.to_vec() };
        let before = self.data.epoch();
        let r = self.rpc().unlink(req).await;
        let r = self.removed_or_renamed(before, r)?;
        self.deleg.lock().noted(parent, None, Some(name), r.parent);
        Ok(())
    }

    pub async fn rmdir(&self, c: Ctx, parent: u64, name: &[u8]) -> FsResult<()> {
        check_name(name)?;
        let parent = self.to_server(parent);
        // The directory removed may be one this mount holds: what is pending there goes first.
        self.settle_all().await?;
        let req = pb::NameRequest { ctx: self.ctx(c), parent, name: name.to_vec() };
        let before = self.data.epoch();
        let r = self.rpc().rm_dir(req).await;
        let r = self.removed_or_renamed(before, r)?;
        self.deleg.lock().noted(parent, None, Some(name), r.parent);
        Ok(())
    }

    pub async fn rename(
        &self,
        c: Ctx,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        check_name(name)?;
        check_name(new_name)?;
        let req = pb::RenameRequest {
            ctx: self.ctx(c),
            parent: self.to_server(parent),
            name: name.to_vec(),
            new_parent: self.to_server(new_parent),
            new_name: new_name.to_vec(),
            flags,
        };
        // The entry replaced may be a directory this mount holds: what is pending there goes first.
        self.settle_all().await?;
        let before = self.data.epoch();
        let (p, np) = (req.parent, req.new_parent);
        let r = self.rpc().rename(req).await;
        if let Err(s) = &r {
            self.maybe_named(np, s).await;
        }
        let r = self.removed_or_renamed(before, r)?;
        let mut st = self.deleg.lock();
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        st.noted(p, exchange.then_some(name), (!exchange).then_some(name), r.parent);
        st.noted(np, Some(new_name), None, if p == np { r.parent } else { r.new_parent });
        Ok(())
    }

    pub async fn link(&self, c: Ctx, ino: u64, new_parent: u64, new_name: &[u8]) -> FsResult<pb::Attr> {
        check_name(new_name)?;
        let req = pb::LinkRequest {
            ctx: self.ctx(c),
            ino: self.to_server(ino),
            new_parent: self.to_server(new_parent),
            new_name: new_name.to_vec(),
        };
        self.settle(&[req.ino, req.new_parent]).await?;
        let np = req.new_parent;
        let before = self.data.epoch();
        let r = self.rpc().link(req).await;
        let after = self.changed_outside_data_path(before);
        let r = self.named_in(np, new_name, r).await?;
        if let Some(e) = after {
            self.data.remember_attrs(r.parent, e);
        }
        Ok(self.local_attr(r.attr.unwrap_or_default()).await)
    }

    /// One page of directory entries after `cookie` (attributes included with `plus`).
    pub async fn readdir(&self, c: Ctx, ino: u64, cookie: u64, limit: u32, plus: bool) -> FsResult<Vec<pb::DirEntry>> {
        self.settle(&[self.to_server(ino)]).await?;
        let req = pb::ReadDirRequest { ctx: self.ctx(c), ino: self.to_server(ino), cookie, limit, plus };
        let mut entries = self.rpc().read_dir(req).await.map_err(errno_of)?.into_inner().entries;
        if plus {
            for e in &mut entries {
                if let Some(a) = e.attr.take() {
                    e.attr = Some(self.local_attr(a).await);
                }
            }
        }
        Ok(entries)
    }

    pub async fn statfs(&self, c: Ctx, ino: u64) -> FsResult<pb::StatFsReply> {
        let r = self.rpc().stat_fs(pb::InodeRequest { ctx: self.ctx(c), ino: self.to_server(ino) }).await;
        Ok(r.map_err(errno_of)?.into_inner())
    }

    pub async fn getxattr(&self, c: Ctx, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        let ino = self.to_server(ino);
        // The kernel asks for security.capability before every write(2) (to drop it): an absent
        // one is remembered for the attribute TTL instead of asking the server each time.
        let capability = name == b"security.capability";
        if capability
            && let Some(at) = self.no_capability.lock().get(&ino)
            && at.elapsed() < self.cfg.attr_ttl
        {
            return Err(libc::ENODATA);
        }
        self.settle(&[ino]).await?;
        let req = pb::XattrRequest { ctx: self.ctx(c), ino, name: name.to_vec() };
        match self.rpc().get_xattr(req).await.map_err(errno_of) {
            Err(libc::ENODATA) if capability => {
                let mut cache = self.no_capability.lock();
                if cache.len() > 100_000 {
                    cache.clear();
                }
                cache.insert(ino, std::time::Instant::now());
                Err(libc::ENODATA)
            }
            r => Ok(r?.into_inner().value),
        }
    }

    pub async fn listxattr(&self, c: Ctx, ino: u64) -> FsResult<Vec<Vec<u8>>> {
        self.settle(&[self.to_server(ino)]).await?;
        let r = self.rpc().list_xattr(pb::InodeRequest { ctx: self.ctx(c), ino: self.to_server(ino) }).await;
        Ok(r.map_err(errno_of)?.into_inner().names)
    }

    /// `acl_kill_sgid`: the kernel asks that setting this ACL clear the setgid bit.
    pub async fn setxattr(
        &self,
        c: Ctx,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: u32,
        acl_kill_sgid: bool,
    ) -> FsResult<()> {
        // A held directory gives its delegation back: a default ACL changes what creates there do.
        self.give_back(self.to_server(ino)).await?;
        let req = pb::SetXattrRequest {
            ctx: self.ctx(c),
            ino: self.to_server(ino),
            name: name.to_vec(),
            value: value.to_vec(),
            flags,
            acl_kill_sgid,
        };
        let r = self.rpc().set_xattr(req).await;
        self.void_remembered_attrs();
        r.map_err(errno_of)?;
        self.no_capability.lock().remove(&self.to_server(ino));
        Ok(())
    }

    pub async fn removexattr(&self, c: Ctx, ino: u64, name: &[u8]) -> FsResult<()> {
        self.give_back(self.to_server(ino)).await?;
        let req = pb::XattrRequest { ctx: self.ctx(c), ino: self.to_server(ino), name: name.to_vec() };
        let r = self.rpc().remove_xattr(req).await;
        self.void_remembered_attrs();
        r.map_err(errno_of)?;
        Ok(())
    }

    /// fsync of a directory, syncfs: every change this session made is durable on return.
    pub async fn sync_all(&self, c: Ctx) -> FsResult<()> {
        self.settle_all().await?;
        self.rpc().sync(self.session.ctx(c.uid, c.gid, c.pid)).await.map_err(errno_of)?;
        Ok(())
    }

    // --- open files ---------------------------------------------------------------------------

    /// A new file has no security.capability: the kernel's question at its first write needs no
    /// round trip.
    fn created_without_capability(&self, ino: u64) {
        self.no_capability.lock().insert(ino, std::time::Instant::now());
    }

    /// Registers an open and compares the file with what this mount saw last.
    async fn opened(&self, c: Ctx, ino: u64, r: OpenedReply<'_>) -> FsResult<Opened> {
        let OpenedReply { open_id, attr, quota_limited, created } = r;
        self.handles.lock().insert(open_id, Handle::default());
        let f = self.file(ino);
        f.opens.fetch_add(1, Ordering::Relaxed);
        let mut st = f.lock().await;
        st.quota_limited = quota_limited;
        let changed = self.data.opened(c, &mut st, attr, created).await?;
        Ok(Opened { fh: open_id, changed })
    }

    pub async fn open(&self, c: Ctx, ino: u64, flags: u32) -> FsResult<Opened> {
        let ino = self.to_server(ino);
        self.settle(&[ino]).await?;
        if flags as i32 & libc::O_TRUNC != 0
            && let Some(f) = self.existing_file(ino)
        {
            // The server truncates at open: this mount's unflushed writes go first.
            self.data.commit(c, &mut *f.lock().await, false).await?;
        }
        let r = self.rpc().open(pb::OpenRequest { ctx: self.ctx(c), ino, flags }).await.map_err(errno_of)?.into_inner();
        let attr = r.attr.unwrap_or_default();
        let reply = OpenedReply { open_id: r.open_id, attr: &attr, quota_limited: r.quota_limited, created: false };
        self.opened(c, ino, reply).await
    }

    pub async fn create(
        &self,
        c: Ctx,
        parent: u64,
        name: &[u8],
        perm: u32,
        umask: u32,
        flags: u32,
    ) -> FsResult<(pb::Attr, Opened)> {
        check_name(name)?;
        let parent = self.to_server(parent);
        let perm = perm & !self.cfg.umask;
        if let Some(r) = self.create_here(c, parent, name, perm, umask, flags).await {
            return r;
        }
        self.settle(&[parent]).await?;
        let req = pb::MkNodRequest {
            ctx: self.ctx(c),
            parent,
            name: name.to_vec(),
            kind: pb::FileKind::Regular as i32,
            perm,
            umask,
            flags,
            exclusive: flags as i32 & libc::O_EXCL != 0,
            ..Default::default()
        };
        let before = self.data.epoch();
        let r = self.rpc().create(req).await;
        let r = self.named_in(parent, name, r).await?;
        self.data.remember_attrs(r.parent, before);
        let attr = r.attr.unwrap_or_default();
        if r.created {
            self.created_without_capability(attr.ino);
        }
        let reply = OpenedReply { open_id: r.open_id, attr: &attr, quota_limited: r.quota_limited, created: r.created };
        let opened = self.opened(c, attr.ino, reply).await?;
        Ok((attr, opened))
    }

    /// close(2) of one descriptor: commits the file's unflushed writes (visible to every mount
    /// from now on) and drops the POSIX locks of `lock_owner` on it.
    pub async fn flush(&self, c: Ctx, ino: u64, fh: u64, lock_owner: u64) -> FsResult<()> {
        let ino = self.to_server(ino);
        if self.is_pending(ino) {
            // Committed when applied (another mount reaches the file only through a recall).
            return Ok(());
        }
        self.settle(&[ino]).await?;
        let f = self.file(ino);
        let mut st = f.lock().await;
        let r = self.data.commit(c, &mut st, false).await;
        if st.lock_owners.remove(&lock_owner) {
            let req = pb::LockRequest {
                ctx: self.ctx(c),
                ino,
                owner: lock_owner,
                kind: pb::LockKind::Posix as i32,
                r#type: pb::LockType::Unlock as i32,
                start: 0,
                end: u64::MAX,
                wait: false,
                open_id: fh,
            };
            self.rpc().set_lock(req).await.map_err(errno_of)?;
        }
        r
    }

    /// fsync: returns when the file's blocks and block map are durable.
    pub async fn fsync(&self, c: Ctx, ino: u64) -> FsResult<()> {
        self.settle(&[self.to_server(ino)]).await?;
        let f = self.file(self.to_server(ino));
        let mut st = f.lock().await;
        if st.has_dirty() {
            self.data.commit(c, &mut st, true).await
        } else {
            // Earlier commits of this file (at close) may not be durable yet.
            self.sync_all(c).await
        }
    }

    /// The last close of a handle.
    pub async fn release(&self, c: Ctx, ino: u64, fh: u64) -> FsResult<()> {
        let ino = self.to_server(ino);
        let handle = self.handles.lock().remove(&fh).unwrap_or_default();
        let f = self.file(ino);
        if self.release_here(ino, fh) {
            f.opens.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(1))).ok();
            return Ok(());
        }
        self.settle(&[ino]).await?;
        let r = {
            let mut st = f.lock().await;
            let r = self.data.commit(c, &mut st, false).await;
            for o in &handle.lock_owners {
                st.lock_owners.remove(o);
            }
            r
        };
        let req =
            pb::ReleaseRequest { ctx: self.ctx(c), open_id: fh, lock_owners: handle.lock_owners.into_iter().collect() };
        self.rpc().release(req).await.map_err(errno_of)?;
        // The other handles of this mount on the inode, if any, keep its state.
        let was = f.opens.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(1)));
        if was.unwrap_or(0) <= 1 {
            let mut st = f.lock().await;
            self.data.idle(c, &mut st).await;
            if !st.has_dirty() && st.lock_owners.is_empty() && self.files.lock().len() > MAX_IDLE_FILES {
                // Forgotten: its next open in this mount counts as changed.
                self.files.lock().remove(&ino);
            }
        }
        r
    }

    pub async fn read(&self, c: Ctx, ino: u64, offset: u64, size: u32) -> FsResult<Vec<bytes::Bytes>> {
        let f = self.file(self.to_server(ino));
        self.data.read(c, &f, offset, size).await
    }

    pub async fn write(&self, c: Ctx, ino: u64, offset: u64, data: WriteData<'_>) -> FsResult<u32> {
        self.writing_here(self.to_server(ino), offset.saturating_add(data.len() as u64)).await?;
        let f = self.file(self.to_server(ino));
        let mut st = f.lock().await;
        self.data.write(c, &mut st, offset, data).await
    }

    /// fallocate(2): allocation (mode 0, KEEP_SIZE), PUNCH_HOLE and ZERO_RANGE.
    pub async fn fallocate(&self, c: Ctx, ino: u64, fh: u64, offset: u64, len: u64, mode: i32) -> FsResult<()> {
        let ino = self.to_server(ino);
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let zero = mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0;
        let known = libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !known != 0 || (mode & libc::FALLOC_FL_PUNCH_HOLE != 0 && !keep_size) {
            return Err(libc::EOPNOTSUPP);
        }
        let end = offset.checked_add(len).ok_or(libc::EFBIG)?;
        self.settle(&[ino]).await?;
        let f = self.file(ino);
        let mut st = f.lock().await;
        if zero {
            self.data.zero_range(c, &mut st, offset, end).await?;
        }
        // Blocks are allocated when written (holes are not stored): allocation only moves the
        // size, and only up.
        let size = st.size();
        if !keep_size && end > size {
            self.data.commit(c, &mut st, false).await?;
            let req = pb::SetAttrRequest { ctx: self.ctx(c), ino, size: Some(end), open_id: fh, ..Default::default() };
            let r = self.rpc().set_attr(req).await;
            self.void_remembered_attrs();
            let a = r.map_err(errno_of)?.into_inner().attr.unwrap_or_default();
            self.data.truncated(c, &mut st, &a).await?;
        } else if !zero {
            // posix_fallocate changes ctime even when nothing had to be allocated.
            self.data.commit(c, &mut st, false).await?;
        }
        Ok(())
    }

    /// SEEK_DATA / SEEK_HOLE.
    pub async fn lseek(&self, ino: u64, offset: u64, whence: i32) -> FsResult<u64> {
        let f = self.file(self.to_server(ino));
        let st = f.lock().await;
        st.seek(offset, whence, self.block_size())
    }

    // --- locks --------------------------------------------------------------------------------

    /// F_GETLK: the conflicting lock, if any (type UNLOCK when none).
    pub async fn getlk(&self, c: Ctx, ino: u64, req: pb::LockRequest) -> FsResult<pb::GetLockReply> {
        self.settle(&[self.to_server(ino)]).await?;
        let req = pb::LockRequest { ctx: self.ctx(c), ino: self.to_server(ino), ..req };
        Ok(self.rpc().get_lock(req).await.map_err(errno_of)?.into_inner())
    }

    /// F_SETLK / F_SETLKW / flock. A wait ends when the server grants the lock or the call is
    /// cancelled (FUSE_INTERRUPT aborts the task, which cancels the RPC and withdraws the wait).
    pub async fn setlk(&self, c: Ctx, ino: u64, fh: u64, req: pb::LockRequest) -> FsResult<()> {
        let ino = self.to_server(ino);
        self.settle(&[ino]).await?;
        if req.kind() == pb::LockKind::Posix && req.r#type() != pb::LockType::Unlock {
            self.handles.lock().entry(fh).or_default().lock_owners.insert(req.owner);
            self.file(ino).lock().await.lock_owners.insert(req.owner);
        }
        let req = pb::LockRequest { ctx: self.ctx(c), ino, open_id: fh, ..req };
        self.rpc().set_lock(req).await.map_err(errno_of)?;
        Ok(())
    }
}
