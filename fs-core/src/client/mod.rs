//! The filesystem a mount serves, independent of FUSE: namespace calls go to the metadata server
//! over the session; file data is read and written as blocks in the block store.
//!
//! Every method takes the caller's credentials ([`Ctx`]) and returns `Result<_, i32>` (errno), so
//! the FUSE adapter only translates. Node ids are the server's inode numbers, except that the
//! session's root is node 1 (FUSE's root); [`StratusFs::to_server`] and [`StratusFs::to_kernel`]
//! are the one place that mapping happens.
//!
//! Data: each open inode has a [`FileState`]: the block map read at open (close-to-open
//! consistency), the size, and dirty blocks. A write copies into the dirty block (read-modify-write
//! from its base block); flush, fsync and release upload the dirty blocks as new immutable objects
//! and commit them, each naming the version it was built on; a stale base is re-read, the writes
//! re-applied on it, and the commit retried.

pub mod cache;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parking_lot::Mutex;

use crate::blockstore::{BackendSpec, codec, layout, open_backend};
use crate::meta::MetaError;
use crate::meta::client::Session;
use crate::proto::pb;
use cache::BlockCache;

pub type FsResult<T> = Result<T, i32>;

/// The caller of an operation (from the FUSE request header).
#[derive(Clone, Copy, Debug, Default)]
pub struct Ctx {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// Mount options that change what the filesystem does (kernel-side options live in the mount).
#[derive(Clone, Debug)]
pub struct FsConfig {
    pub attr_ttl: Duration,
    pub entry_ttl: Duration,
    /// Memory for decoded blocks (L1).
    pub cache_bytes: usize,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig { attr_ttl: Duration::from_secs(1), entry_ttl: Duration::from_secs(1), cache_bytes: 256 << 20 }
    }
}

fn errno_of(s: tonic::Status) -> i32 {
    let e = MetaError::from_status(&s);
    if matches!(e, MetaError::Internal(_)) || e.errno() == libc::EIO {
        tracing::warn!(error = %e, "metadata request failed");
    }
    e.errno()
}

/// A block being written: its whole content (base plus writes), what it was built on, and which
/// byte ranges this mount wrote (re-applied on a newer base when the commit is stale).
struct Dirty {
    data: Vec<u8>,
    base_version: u64,
    extents: Vec<(usize, usize)>,
}

/// Per-inode data state shared by the mount's handles of that inode.
#[derive(Default)]
pub struct FileState {
    map: HashMap<u64, pb::BlockRef>,
    size: u64,
    dirty: BTreeMap<u64, Dirty>,
    /// The change counter seen at the last open (kernel page cache kept while it is unchanged).
    change: u64,
}

/// An open file handle.
struct Handle {
    ino: u64,
    lock_owners: HashSet<u64>,
}

pub struct StratusFs {
    pub session: Arc<Session>,
    pub volume: pb::VolumeInfo,
    pub cfg: FsConfig,
    store: Arc<dyn ObjectStore>,
    block_size: u64,
    compression: pb::compression::Kind,
    root: u64,
    files: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<FileState>>>>,
    handles: Mutex<HashMap<u64, Handle>>,
    cache: BlockCache,
}

/// What a successful open tells the kernel.
pub struct Opened {
    pub fh: u64,
    /// The content did not change since this mount last opened the file: keep the page cache.
    pub keep_cache: bool,
}

impl StratusFs {
    pub fn new(session: Arc<Session>, cfg: FsConfig) -> Result<StratusFs, String> {
        let volume = session.reply.volume.clone().ok_or("the server sent no volume description")?;
        let spec: BackendSpec = serde_json::from_str(&volume.backend_json)
            .map_err(|e| format!("the volume's block-store spec does not parse: {e}"))?;
        let store = open_backend(&spec).map_err(|e| e.to_string())?;
        let compression = volume.compression.map(|c| c.kind()).unwrap_or(pb::compression::Kind::Lz4);
        Ok(StratusFs {
            block_size: volume.block_size as u64,
            compression,
            root: session.root_ino(),
            cache: BlockCache::new(cfg.cache_bytes),
            cfg,
            store,
            volume,
            session,
            files: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
        })
    }

    /// Makes `path` (relative to the session's root) the mount's root.
    pub async fn set_root_path(&mut self, path: &str) -> Result<(), String> {
        let mut ino = self.root;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            let r = self
                .rpc()
                .lookup(pb::NameRequest { ctx: self.ctx(Ctx::default()), parent: ino, name: part.as_bytes().to_vec() })
                .await;
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

    fn ctx(&self, c: Ctx) -> Option<pb::Context> {
        Some(self.session.ctx(c.uid, c.gid, c.pid))
    }

    fn rpc(&self) -> pb::meta_client::MetaClient<tonic::transport::Channel> {
        self.session.rpc.clone()
    }

    fn state(&self, ino: u64) -> Arc<tokio::sync::Mutex<FileState>> {
        self.files.lock().entry(ino).or_default().clone()
    }

    /// Attributes as this mount sees them: the server's, with the size raised by unflushed writes.
    async fn local_attr(&self, mut a: pb::Attr) -> pb::Attr {
        let st = self.files.lock().get(&a.ino).cloned();
        if let Some(st) = st {
            let st = st.lock().await;
            if !st.dirty.is_empty() {
                a.size = a.size.max(st.size);
            }
        }
        a
    }

    // --- namespace ----------------------------------------------------------------------------

    pub async fn lookup(&self, c: Ctx, parent: u64, name: &[u8]) -> FsResult<pb::Attr> {
        let r = self
            .rpc()
            .lookup(pb::NameRequest { ctx: self.ctx(c), parent: self.to_server(parent), name: name.to_vec() })
            .await;
        let a = r.map_err(errno_of)?.into_inner().attr.unwrap_or_default();
        Ok(self.local_attr(a).await)
    }

    pub async fn getattr(&self, c: Ctx, ino: u64) -> FsResult<pb::Attr> {
        let r = self.rpc().get_attr(pb::InodeRequest { ctx: self.ctx(c), ino: self.to_server(ino) }).await;
        let a = r.map_err(errno_of)?.into_inner().attr.unwrap_or_default();
        Ok(self.local_attr(a).await)
    }

    pub async fn setattr(&self, c: Ctx, mut req: pb::SetAttrRequest) -> FsResult<pb::Attr> {
        req.ino = self.to_server(req.ino);
        req.ctx = self.ctx(c);
        if req.size.is_some() {
            // Unflushed writes first, so the truncate applies to them too.
            self.flush_inode(c, req.ino, false).await?;
        }
        let a = self.rpc().set_attr(req.clone()).await.map_err(errno_of)?.into_inner().attr.unwrap_or_default();
        if req.size.is_some() {
            let st = self.state(a.ino);
            let mut st = st.lock().await;
            self.reload_map(c, a.ino, &mut st).await?;
        }
        Ok(a)
    }

    /// mknod and mkdir: `req` names the parent as the kernel does (node ids).
    pub async fn mknod(&self, c: Ctx, mut req: pb::MkNodRequest) -> FsResult<pb::Attr> {
        req.ctx = self.ctx(c);
        req.parent = self.to_server(req.parent);
        let r = if req.kind() == pb::FileKind::Directory {
            self.rpc().mk_dir(req).await
        } else {
            self.rpc().mk_nod(req).await
        };
        Ok(r.map_err(errno_of)?.into_inner().attr.unwrap_or_default())
    }

    pub async fn symlink(&self, c: Ctx, parent: u64, name: &[u8], target: &[u8]) -> FsResult<pb::Attr> {
        let req = pb::SymlinkRequest {
            ctx: self.ctx(c),
            parent: self.to_server(parent),
            name: name.to_vec(),
            target: target.to_vec(),
        };
        Ok(self.rpc().symlink(req).await.map_err(errno_of)?.into_inner().attr.unwrap_or_default())
    }

    pub async fn readlink(&self, c: Ctx, ino: u64) -> FsResult<Vec<u8>> {
        let r = self.rpc().read_link(pb::InodeRequest { ctx: self.ctx(c), ino: self.to_server(ino) }).await;
        Ok(r.map_err(errno_of)?.into_inner().target)
    }

    pub async fn unlink(&self, c: Ctx, parent: u64, name: &[u8]) -> FsResult<()> {
        let req = pb::NameRequest { ctx: self.ctx(c), parent: self.to_server(parent), name: name.to_vec() };
        self.rpc().unlink(req).await.map_err(errno_of)?;
        Ok(())
    }

    pub async fn rmdir(&self, c: Ctx, parent: u64, name: &[u8]) -> FsResult<()> {
        let req = pb::NameRequest { ctx: self.ctx(c), parent: self.to_server(parent), name: name.to_vec() };
        self.rpc().rm_dir(req).await.map_err(errno_of)?;
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
        let req = pb::RenameRequest {
            ctx: self.ctx(c),
            parent: self.to_server(parent),
            name: name.to_vec(),
            new_parent: self.to_server(new_parent),
            new_name: new_name.to_vec(),
            flags,
        };
        self.rpc().rename(req).await.map_err(errno_of)?;
        Ok(())
    }

    pub async fn link(&self, c: Ctx, ino: u64, new_parent: u64, new_name: &[u8]) -> FsResult<pb::Attr> {
        let req = pb::LinkRequest {
            ctx: self.ctx(c),
            ino: self.to_server(ino),
            new_parent: self.to_server(new_parent),
            new_name: new_name.to_vec(),
        };
        let a = self.rpc().link(req).await.map_err(errno_of)?.into_inner().attr.unwrap_or_default();
        Ok(self.local_attr(a).await)
    }

    /// One page of directory entries after `cookie` (attributes included with `plus`).
    pub async fn readdir(&self, c: Ctx, ino: u64, cookie: u64, limit: u32, plus: bool) -> FsResult<Vec<pb::DirEntry>> {
        let req = pb::ReadDirRequest { ctx: self.ctx(c), ino: self.to_server(ino), cookie, limit, plus };
        Ok(self.rpc().read_dir(req).await.map_err(errno_of)?.into_inner().entries)
    }

    pub async fn statfs(&self, c: Ctx, ino: u64) -> FsResult<pb::StatFsReply> {
        let r = self.rpc().stat_fs(pb::InodeRequest { ctx: self.ctx(c), ino: self.to_server(ino) }).await;
        Ok(r.map_err(errno_of)?.into_inner())
    }

    pub async fn getxattr(&self, c: Ctx, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        let r = self
            .rpc()
            .get_xattr(pb::XattrRequest { ctx: self.ctx(c), ino: self.to_server(ino), name: name.to_vec() })
            .await;
        Ok(r.map_err(errno_of)?.into_inner().value)
    }

    pub async fn listxattr(&self, c: Ctx, ino: u64) -> FsResult<Vec<Vec<u8>>> {
        let r = self.rpc().list_xattr(pb::InodeRequest { ctx: self.ctx(c), ino: self.to_server(ino) }).await;
        Ok(r.map_err(errno_of)?.into_inner().names)
    }

    pub async fn setxattr(&self, c: Ctx, ino: u64, name: &[u8], value: &[u8], flags: u32) -> FsResult<()> {
        let req = pb::SetXattrRequest {
            ctx: self.ctx(c),
            ino: self.to_server(ino),
            name: name.to_vec(),
            value: value.to_vec(),
            flags,
        };
        self.rpc().set_xattr(req).await.map_err(errno_of)?;
        Ok(())
    }

    pub async fn removexattr(&self, c: Ctx, ino: u64, name: &[u8]) -> FsResult<()> {
        let req = pb::XattrRequest { ctx: self.ctx(c), ino: self.to_server(ino), name: name.to_vec() };
        self.rpc().remove_xattr(req).await.map_err(errno_of)?;
        Ok(())
    }

    // --- open files ---------------------------------------------------------------------------

    async fn opened(&self, c: Ctx, ino: u64, open_id: u64, attr: &pb::Attr) -> FsResult<Opened> {
        self.handles.lock().insert(open_id, Handle { ino, lock_owners: HashSet::new() });
        let st = self.state(ino);
        let mut st = st.lock().await;
        let keep_cache = st.change == attr.change && st.dirty.is_empty();
        st.change = attr.change;
        if st.dirty.is_empty() {
            st.size = attr.size;
        }
        self.reload_map(c, ino, &mut st).await?;
        Ok(Opened { fh: open_id, keep_cache })
    }

    pub async fn open(&self, c: Ctx, ino: u64, flags: u32) -> FsResult<Opened> {
        let ino = self.to_server(ino);
        let r = self.rpc().open(pb::OpenRequest { ctx: self.ctx(c), ino, flags }).await.map_err(errno_of)?.into_inner();
        self.opened(c, ino, r.open_id, &r.attr.unwrap_or_default()).await
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
        let req = pb::MkNodRequest {
            ctx: self.ctx(c),
            parent: self.to_server(parent),
            name: name.to_vec(),
            kind: pb::FileKind::Regular as i32,
            perm,
            umask,
            flags,
            exclusive: flags as i32 & libc::O_EXCL != 0,
            ..Default::default()
        };
        let r = self.rpc().create(req).await.map_err(errno_of)?.into_inner();
        let attr = r.attr.unwrap_or_default();
        let opened = self.opened(c, attr.ino, r.open_id, &attr).await?;
        Ok((attr, opened))
    }

    /// Commits the inode's dirty blocks (with `durable`, the reply waits for the disk).
    pub async fn flush_inode(&self, c: Ctx, ino: u64, durable: bool) -> FsResult<()> {
        let Some(st) = self.files.lock().get(&ino).cloned() else {
            return Ok(());
        };
        let mut st = st.lock().await;
        self.commit(c, ino, &mut st, durable).await
    }

    pub async fn flush(&self, c: Ctx, fh: u64, lock_owner: Option<u64>) -> FsResult<()> {
        let ino = self.handles.lock().get(&fh).map(|h| h.ino).ok_or(libc::EBADF)?;
        self.flush_inode(c, ino, false).await?;
        if let Some(owner) = lock_owner {
            // close(2) drops the process's POSIX locks on the file.
            let req = pb::LockRequest {
                ctx: self.ctx(c),
                ino,
                owner,
                kind: pb::LockKind::Posix as i32,
                r#type: pb::LockType::Unlock as i32,
                start: 0,
                end: u64::MAX,
                wait: false,
                open_id: fh,
            };
            self.rpc().set_lock(req).await.map_err(errno_of)?;
        }
        Ok(())
    }

    pub async fn fsync(&self, c: Ctx, fh: u64) -> FsResult<()> {
        let ino = self.handles.lock().get(&fh).map(|h| h.ino).ok_or(libc::EBADF)?;
        let st = self.state(ino);
        let mut st = st.lock().await;
        if st.dirty.is_empty() {
            self.rpc().sync(self.session.ctx(c.uid, c.gid, c.pid)).await.map_err(errno_of)?;
            return Ok(());
        }
        self.commit(c, ino, &mut st, true).await
    }

    pub async fn release(&self, c: Ctx, fh: u64) -> FsResult<()> {
        let Some(h) = self.handles.lock().remove(&fh) else { return Ok(()) };
        let r = self.flush_inode(c, h.ino, false).await;
        let req =
            pb::ReleaseRequest { ctx: self.ctx(c), open_id: fh, lock_owners: h.lock_owners.into_iter().collect() };
        self.rpc().release(req).await.map_err(errno_of)?;
        let still_open = self.handles.lock().values().any(|o| o.ino == h.ino);
        if !still_open {
            let st = self.files.lock().get(&h.ino).cloned();
            if let Some(st) = st
                && st.lock().await.dirty.is_empty()
            {
                self.files.lock().remove(&h.ino);
            }
        }
        r
    }

    // --- data ---------------------------------------------------------------------------------

    async fn reload_map(&self, c: Ctx, ino: u64, st: &mut FileState) -> FsResult<()> {
        let req = pb::GetBlocksRequest { ctx: self.ctx(c), ino, first_index: 0, count: 0 };
        let r = self.rpc().get_blocks(req).await.map_err(errno_of)?.into_inner();
        st.map = r.blocks.into_iter().map(|b| (b.index, b)).collect();
        if let Some(a) = r.attr
            && st.dirty.is_empty()
        {
            st.size = a.size;
        }
        Ok(())
    }

    /// The decoded content of a stored block (L1 cache, one fetch however many readers).
    async fn block(&self, b: &pb::BlockRef) -> FsResult<Arc<Vec<u8>>> {
        let key = layout::block_key(&self.volume.uuid, b.id);
        let (store, b2) = (self.store.clone(), b.clone());
        self.cache
            .get_or_fetch(b.id, async move {
                let bytes = store.get(&key).await.map_err(|e| {
                    tracing::error!(block = b2.id, error = %e, "reading a block object failed");
                    libc::EIO
                })?;
                let stored = bytes.bytes().await.map_err(|e| {
                    tracing::error!(block = b2.id, error = %e, "reading a block object failed");
                    libc::EIO
                })?;
                codec::decode(&stored, b2.compression(), b2.len as usize, &b2.checksum).map(Arc::new).map_err(|e| {
                    tracing::error!(block = b2.id, key = %key, error = %e, "a block failed its check; returning EIO");
                    libc::EIO
                })
            })
            .await
    }

    pub async fn read(&self, _c: Ctx, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let ino = self.handles.lock().get(&fh).map(|h| h.ino).ok_or(libc::EBADF)?;
        let st = self.state(ino);
        let st = st.lock().await;
        let end = (offset + size as u64).min(st.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = vec![0u8; (end - offset) as usize];
        let bs = self.block_size;
        let mut pos = offset;
        while pos < end {
            let index = pos / bs;
            let in_block = (pos % bs) as usize;
            let n = ((bs - pos % bs).min(end - pos)) as usize;
            let dst = &mut out[(pos - offset) as usize..(pos - offset) as usize + n];
            let fill = |dst: &mut [u8], src: &[u8]| {
                if in_block < src.len() {
                    let m = (src.len() - in_block).min(dst.len());
                    dst[..m].copy_from_slice(&src[in_block..in_block + m]);
                }
            };
            if let Some(d) = st.dirty.get(&index) {
                fill(dst, &d.data);
            } else if let Some(b) = st.map.get(&index) {
                let data = self.block(b).await?;
                fill(dst, &data[..(b.len as usize).min(data.len())]);
            }
            pos += n as u64;
        }
        Ok(out)
    }

    pub async fn write(&self, _c: Ctx, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let ino = self.handles.lock().get(&fh).map(|h| h.ino).ok_or(libc::EBADF)?;
        let st = self.state(ino);
        let mut st = st.lock().await;
        let bs = self.block_size;
        let mut pos = offset;
        let end = offset + data.len() as u64;
        while pos < end {
            let index = pos / bs;
            let in_block = (pos % bs) as usize;
            let n = ((bs - pos % bs).min(end - pos)) as usize;
            if !st.dirty.contains_key(&index) {
                let (base, version) = match st.map.get(&index) {
                    Some(b) => {
                        let d = self.block(b).await?;
                        (d[..(b.len as usize).min(d.len())].to_vec(), b.version)
                    }
                    None => (Vec::new(), 0),
                };
                st.dirty.insert(index, Dirty { data: base, base_version: version, extents: Vec::new() });
            }
            let d = st.dirty.get_mut(&index).expect("inserted above");
            if d.data.len() < in_block + n {
                d.data.resize(in_block + n, 0);
            }
            let src = &data[(pos - offset) as usize..(pos - offset) as usize + n];
            d.data[in_block..in_block + n].copy_from_slice(src);
            d.extents.push((in_block, in_block + n));
            pos += n as u64;
        }
        st.size = st.size.max(end);
        Ok(data.len() as u32)
    }

    /// Uploads the dirty blocks and commits them; on a stale base re-reads the map, re-applies
    /// this mount's writes on the new bases and retries.
    async fn commit(&self, c: Ctx, ino: u64, st: &mut FileState, durable: bool) -> FsResult<()> {
        if st.dirty.is_empty() {
            return Ok(());
        }
        for _attempt in 0..16 {
            let n = st.dirty.len() as u32;
            let ids = self
                .rpc()
                .allocate_blocks(pb::AllocateBlocksRequest { ctx: self.ctx(c), count: n })
                .await
                .map_err(errno_of)?
                .into_inner()
                .ids;
            let mut uploads = Vec::new();
            let mut changes = Vec::new();
            for ((index, d), id) in st.dirty.iter().zip(ids) {
                let (stored, checksum, kind) = codec::encode(&d.data, self.compression);
                let key = layout::block_key(&self.volume.uuid, id);
                changes.push(pb::BlockChange {
                    index: *index,
                    base_version: d.base_version,
                    block: Some(pb::BlockRef {
                        index: *index,
                        id,
                        len: d.data.len() as u32,
                        version: 0,
                        stored_len: stored.len() as u32,
                        checksum,
                        compression: kind as i32,
                    }),
                });
                let store = self.store.clone();
                uploads.push(async move { store.put(&key, PutPayload::from(stored)).await });
            }
            for r in futures::future::join_all(uploads).await {
                r.map_err(|e| {
                    tracing::error!(ino, error = %e, "uploading a block failed");
                    libc::EIO
                })?;
            }
            let req = pb::CommitBlocksRequest {
                ctx: self.ctx(c),
                ino,
                open_id: 0,
                changes,
                end: st.size,
                mtime: None,
                durable,
            };
            match self.rpc().commit_blocks(req).await {
                Ok(r) => {
                    let a = r.into_inner().attr.unwrap_or_default();
                    st.dirty.clear();
                    st.change = a.change;
                    return self.reload_map(c, ino, st).await;
                }
                Err(s) if s.code() == tonic::Code::Aborted => {
                    // Someone else changed some of these blocks: rebuild on their versions.
                    self.reload_map(c, ino, st).await?;
                    let indexes: Vec<u64> = st.dirty.keys().copied().collect();
                    for index in indexes {
                        let cur = st.map.get(&index).cloned();
                        let d = st.dirty.get_mut(&index).expect("listed above");
                        let cur_version = cur.as_ref().map_or(0, |b| b.version);
                        if cur_version == d.base_version {
                            continue;
                        }
                        let mut base = match &cur {
                            Some(b) => {
                                let data = self.block(b).await?;
                                data[..(b.len as usize).min(data.len())].to_vec()
                            }
                            None => Vec::new(),
                        };
                        for &(s, e) in &d.extents {
                            if base.len() < e {
                                base.resize(e, 0);
                            }
                            base[s..e].copy_from_slice(&d.data[s..e]);
                        }
                        d.data = base;
                        d.base_version = cur_version;
                    }
                }
                Err(s) => return Err(errno_of(s)),
            }
        }
        tracing::error!(ino, "commit kept conflicting after 16 attempts");
        Err(libc::EIO)
    }

    // --- locks --------------------------------------------------------------------------------

    /// F_GETLK: the conflicting lock, or `None`.
    pub async fn getlk(&self, c: Ctx, ino: u64, req: pb::LockRequest) -> FsResult<pb::GetLockReply> {
        let req = pb::LockRequest { ctx: self.ctx(c), ino: self.to_server(ino), ..req };
        Ok(self.rpc().get_lock(req).await.map_err(errno_of)?.into_inner())
    }

    /// F_SETLK / F_SETLKW / flock. A wait ends when the server grants the lock or the call is
    /// cancelled (FUSE_INTERRUPT aborts the task, which cancels the RPC and withdraws the wait).
    pub async fn setlk(&self, c: Ctx, ino: u64, fh: u64, req: pb::LockRequest) -> FsResult<()> {
        if req.kind() == pb::LockKind::Posix
            && let Some(h) = self.handles.lock().get_mut(&fh)
        {
            h.lock_owners.insert(req.owner);
        }
        let req = pb::LockRequest { ctx: self.ctx(c), ino: self.to_server(ino), open_id: fh, ..req };
        self.rpc().set_lock(req).await.map_err(errno_of)?;
        Ok(())
    }
}
