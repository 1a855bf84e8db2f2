//! File data: blocks read through the L1 cache, writes buffered per block and uploaded as new
//! immutable objects, commits of the block map.
//!
//! Each inode a mount uses has an [`OpenFile`]: the block map read at open (close-to-open
//! consistency), the size, and the blocks this mount wrote but has not committed ([`Dirty`]). A
//! dirty block remembers the byte ranges written to it (`extents`) and the block it was built on
//! (`base`). A write that completes a block starts its upload at once, so uploads run in parallel
//! with later writes; flush, fsync, release and a full buffer upload the rest and commit them all
//! in one `CommitBlocks`, each change naming the version of its base. When another mount changed
//! one of those blocks meanwhile the server refuses the commit as stale: the block map is read
//! again, the extents are laid over the new bases, and the commit is retried.
//!
//! Quota: before write() accepts bytes that grow the stored data, the session reserves quota for
//! them on the server (`Reserve`, in chunks), so write() itself fails with EDQUOT and accepted
//! bytes are never lost at flush.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use object_store::ObjectStore;
use tokio::sync::{Mutex, MutexGuard, Semaphore};

use super::blocks::{self, BlockIo};
use super::cache::BlockCache;
use super::{Ctx, FsConfig, FsResult, errno_of};
use crate::meta::client::Session;
use crate::proto::pb;

/// Quota is reserved ahead in chunks of this many bytes (at least), to spare round trips.
const RESERVE_CHUNK: u64 = 32 << 20;
/// Block ids are allocated this many at a time.
const ID_BATCH: u32 = 64;
/// Commit attempts before giving up on a file another mount keeps changing.
const COMMIT_ATTEMPTS: usize = 32;

/// A block upload in flight or done.
enum Upload {
    Running(tokio::task::JoinHandle<FsResult<pb::BlockRef>>),
    Done(pb::BlockRef),
}

/// A block this mount wrote and has not committed.
struct Dirty {
    /// Valid inside `extents`; elsewhere valid only when `complete`.
    data: Arc<Vec<u8>>,
    /// Sorted, disjoint, non-adjacent byte ranges written by this mount.
    extents: Vec<(usize, usize)>,
    /// The committed block this one is built on (`None`: the index held no block).
    base: Option<pb::BlockRef>,
    /// `data` holds the base with the extents laid over it.
    complete: bool,
    upload: Option<Upload>,
}

impl Dirty {
    fn new(base: Option<pb::BlockRef>) -> Dirty {
        let complete = base.is_none();
        Dirty { data: Arc::new(Vec::new()), extents: Vec::new(), base, complete, upload: None }
    }

    fn base_len(&self) -> usize {
        self.base.as_ref().map_or(0, |b| b.len as usize)
    }

    /// The block's logical length.
    fn len(&self) -> usize {
        self.base_len().max(self.extents.last().map_or(0, |e| e.1))
    }

    fn add_extent(&mut self, s: usize, e: usize) {
        let mut merged = (s, e);
        let mut out = Vec::with_capacity(self.extents.len() + 1);
        let mut placed = false;
        for &(a, b) in &self.extents {
            if b < merged.0 {
                out.push((a, b));
            } else if a > merged.1 {
                if !placed {
                    out.push(merged);
                    placed = true;
                }
                out.push((a, b));
            } else {
                merged = (merged.0.min(a), merged.1.max(b));
            }
        }
        if !placed {
            out.push(merged);
        }
        self.extents = out;
        if !self.complete && self.extents.len() == 1 && self.extents[0].0 == 0 && self.extents[0].1 >= self.base_len() {
            self.complete = true;
        }
    }

    /// Whether `[s, e)` lies inside one written extent.
    fn covers(&self, s: usize, e: usize) -> bool {
        self.extents.iter().any(|&(a, b)| a <= s && e <= b)
    }

    /// Lays the extents over `base` (the base block's bytes, in pieces).
    fn rebuild(&mut self, base: &[Bytes]) {
        let mut out = Vec::with_capacity(self.len());
        for p in base {
            out.extend_from_slice(p);
        }
        out.resize(self.len(), 0);
        for &(s, e) in &self.extents {
            out[s..e].copy_from_slice(&self.data[s..e]);
        }
        self.data = Arc::new(out);
        self.complete = true;
    }

    fn cancel_upload(&mut self) {
        if let Some(Upload::Running(h)) = self.upload.take() {
            h.abort();
        }
    }
}

/// The data state of one inode in this mount.
#[derive(Default)]
pub struct FileState {
    pub ino: u64,
    /// Block index → committed block, as of the last open or commit. Valid when `loaded`.
    map: HashMap<u64, pb::BlockRef>,
    loaded: bool,
    /// The size the server had at the last open, commit or truncate.
    server_size: u64,
    /// The end of the furthest write not committed yet (0: none).
    written_end: u64,
    dirty: BTreeMap<u64, Dirty>,
    /// The server's change counter when this mount last synchronised with it.
    change: Option<u64>,
    /// Quota this session holds on the server for the inode.
    held: u64,
    /// A byte quota applies to the file (from the last open): writes reserve before accepting.
    pub quota_limited: bool,
    /// Where a sequential reader would read next, and how far read-ahead has been issued.
    next_read: u64,
    readahead_to: u64,
    /// POSIX lock owners that locked this file through this mount (close drops their locks).
    pub lock_owners: HashSet<u64>,
}

/// Attributes a reply of the server carried, when they arrived, and the [`DataPath::epoch`] they
/// are valid in.
type Recent = (pb::Attr, std::time::Instant, u64);

impl FileState {
    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    pub fn size(&self) -> u64 {
        self.server_size.max(self.written_end)
    }

    /// Bytes the dirty blocks add to what is stored (what a commit will charge to quotas).
    fn growth(&self) -> u64 {
        self.dirty.values().map(|d| d.len().saturating_sub(d.base_len()) as u64).sum()
    }

    fn has_block(&self, index: u64) -> bool {
        self.dirty.contains_key(&index) || self.map.contains_key(&index)
    }

    /// SEEK_DATA / SEEK_HOLE at block granularity: a stored (or written) block is data.
    pub fn seek(&self, offset: u64, whence: i32, bs: u64) -> FsResult<u64> {
        let size = self.size();
        if offset >= size {
            return Err(libc::ENXIO);
        }
        let mut index = offset / bs;
        let last = (size - 1) / bs;
        match whence {
            libc::SEEK_DATA => {
                while index <= last {
                    if self.has_block(index) {
                        return Ok(offset.max(index * bs));
                    }
                    index += 1;
                }
                Err(libc::ENXIO)
            }
            libc::SEEK_HOLE => {
                while index <= last {
                    if !self.has_block(index) {
                        return Ok(offset.max(index * bs));
                    }
                    index += 1;
                }
                Ok(size)
            }
            _ => Err(libc::EINVAL),
        }
    }
}

/// An inode's data state and the number of this mount's handles open on it.
pub struct OpenFile {
    st: Mutex<FileState>,
    pub opens: AtomicUsize,
}

impl OpenFile {
    pub fn new(ino: u64) -> OpenFile {
        OpenFile { st: Mutex::new(FileState { ino, ..Default::default() }), opens: AtomicUsize::new(0) }
    }

    pub async fn lock(&self) -> MutexGuard<'_, FileState> {
        self.st.lock().await
    }

    /// The size this mount sees given the server's `size`: unflushed writes raise it.
    pub async fn local_size(&self, size: u64) -> u64 {
        let st = self.st.lock().await;
        if st.has_dirty() { size.max(st.written_end) } else { size }
    }
}

/// One piece of a read.
enum Piece {
    Zero(usize),
    Bytes(Bytes),
    Block { block: pb::BlockRef, from: usize, len: usize },
}

/// Moves blocks between the mount and the block store.
pub struct DataPath {
    session: Arc<Session>,
    blocks: BlockIo,
    bs: u64,
    compression: pb::compression::Kind,
    dirty_limit: usize,
    readahead: u64,
    ids: Mutex<Vec<u64>>,
    /// Bumped by every change this mount makes to inodes outside a file's data path (setattr,
    /// link, unlink, rename, xattrs): it voids every remembered commit attribute at once.
    pub epoch: AtomicU64,
    /// By inode: attributes from this mount's last replies (see [`DataPath::recent_attr`]).
    recent: parking_lot::Mutex<HashMap<u64, Recent>>,
    attr_ttl: std::time::Duration,
}

impl DataPath {
    pub fn new(
        session: Arc<Session>,
        store: Arc<dyn ObjectStore>,
        cache: Arc<BlockCache>,
        volume_uuid: &str,
        bs: u64,
        compression: pb::compression::Kind,
        cfg: &FsConfig,
    ) -> DataPath {
        DataPath {
            session,
            blocks: BlockIo {
                store,
                cache,
                io: Arc::new(Semaphore::new(cfg.io_concurrency.max(1))),
                volume_uuid: volume_uuid.into(),
            },
            bs,
            compression,
            dirty_limit: cfg.dirty_limit.max(4 * bs as usize),
            readahead: cfg.readahead_blocks,
            ids: Mutex::new(Vec::new()),
            epoch: AtomicU64::new(0),
            recent: Default::default(),
            attr_ttl: cfg.attr_ttl,
        }
    }

    pub fn cache_stats(&self) -> (u64, u64) {
        (self.blocks.cache.hits.load(Ordering::Relaxed), self.blocks.cache.fetches.load(Ordering::Relaxed))
    }

    fn ctx(&self, c: Ctx) -> Option<pb::Context> {
        Some(self.session.ctx(c.uid, c.gid, c.pid))
    }

    fn rpc(&self) -> pb::meta_client::MetaClient<tonic::transport::Channel> {
        self.session.rpc.clone()
    }

    // --- attributes from recent replies ----------------------------------------------------------

    /// The attributes of `ino` as this mount's last commit of the file, or last change in the
    /// directory, left them: while they are younger than the attribute TTL and nothing else this
    /// mount did since can have changed them (no write or open of the file; `epoch` unchanged, which
    /// every change that does not report its effect moves). A `stat` after `close`, or the kernel's
    /// GETATTR of a directory after a create or unlink in it, then costs no round trip. Other
    /// mounts' changes show after the TTL, as with the kernel's own attribute cache.
    pub fn recent_attr(&self, ino: u64) -> Option<pb::Attr> {
        let g = self.recent.lock();
        let (a, at, e) = g.get(&ino)?;
        (*e == self.epoch() && at.elapsed() < self.attr_ttl).then_some(*a)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Remembers attributes from a reply, valid in `epoch`. Of two replies about one inode in the
    /// same epoch, the later state (higher change counter) stays.
    pub fn remember_attrs(&self, attr: Option<pb::Attr>, epoch: u64) {
        let Some(attr) = attr else { return };
        let mut g = self.recent.lock();
        if let Some((old, _, e)) = g.get(&attr.ino)
            && *e == epoch
            && old.change > attr.change
        {
            return;
        }
        if g.len() >= 4096 {
            let ttl = self.attr_ttl;
            g.retain(|_, (_, at, _)| at.elapsed() < ttl);
        }
        g.insert(attr.ino, (attr, std::time::Instant::now(), epoch));
    }

    fn forget_attrs(&self, ino: u64) {
        self.recent.lock().remove(&ino);
    }

    // --- open and close ---------------------------------------------------------------------------

    /// At open: compares the server's change counter with what this mount saw last; when it
    /// differs the block map is read again. Returns whether the file changed (or this mount has
    /// no record of it, so the kernel's cache cannot be trusted).
    pub async fn opened(&self, c: Ctx, st: &mut FileState, attr: &pb::Attr, created: bool) -> FsResult<bool> {
        // An open may have changed the file (O_TRUNC) or found it changed: attributes are asked anew.
        self.forget_attrs(st.ino);
        if created {
            // A file this open created has no blocks: nothing to read from the server.
            st.map.clear();
            st.loaded = true;
            st.server_size = attr.size;
            st.change = Some(attr.change);
            return Ok(false);
        }
        let changed = st.change != Some(attr.change);
        if (changed || !st.loaded) && !st.has_dirty() {
            self.load_map(c, st).await?;
            st.change = Some(attr.change);
        }
        Ok(changed)
    }

    /// Reads the whole block map and the size from the server.
    async fn load_map(&self, c: Ctx, st: &mut FileState) -> FsResult<()> {
        let req = pb::GetBlocksRequest { ctx: self.ctx(c), ino: st.ino, first_index: 0, count: 0 };
        let r = self.rpc().get_blocks(req).await.map_err(errno_of)?.into_inner();
        st.map = r.blocks.into_iter().map(|b| (b.index, b)).collect();
        if let Some(a) = r.attr {
            st.server_size = a.size;
        }
        st.loaded = true;
        Ok(())
    }

    async fn ensure_loaded(&self, c: Ctx, st: &mut FileState) -> FsResult<()> {
        if !st.loaded { self.load_map(c, st).await } else { Ok(()) }
    }

    /// After the last handle of the mount on the file closed: the map is dropped (the next open
    /// reads it again if needed) and unused quota is given back.
    pub async fn idle(&self, c: Ctx, st: &mut FileState) {
        if st.has_dirty() {
            return;
        }
        st.map = HashMap::new();
        st.loaded = false;
        if st.held > 0 {
            let req = pb::ReserveRequest { ctx: self.ctx(c), ino: st.ino, bytes: 0 };
            if let Err(s) = self.rpc().reserve(req).await {
                tracing::debug!(ino = st.ino, error = %s, "giving back reserved quota failed (it ends with the session)");
            }
            st.held = 0;
        }
    }

    /// After a truncate to `size` (done by the server): the map is read again.
    pub async fn truncated(&self, c: Ctx, st: &mut FileState, attr: &pb::Attr) -> FsResult<()> {
        self.forget_attrs(st.ino);
        st.written_end = 0;
        st.readahead_to = 0;
        self.load_map(c, st).await?;
        st.server_size = attr.size;
        st.change = Some(attr.change);
        Ok(())
    }

    // --- reading ------------------------------------------------------------------------------

    /// The bytes of a dirty block's base that it keeps (fetched whole: a rewrite needs them all).
    async fn base(&self, d: &Dirty) -> FsResult<Vec<Bytes>> {
        match &d.base {
            Some(b) => {
                self.blocks.whole(b).await?;
                self.blocks.range(b, 0, d.base_len()).await
            }
            None => Ok(Vec::new()),
        }
    }

    /// `size` bytes at `offset` (fewer at the end of the file), as pieces that share the cached
    /// blocks' bytes where they can.
    pub async fn read(&self, c: Ctx, f: &OpenFile, offset: u64, size: u32) -> FsResult<Vec<Bytes>> {
        let mut pieces = Vec::new();
        {
            let mut st = f.lock().await;
            self.ensure_loaded(c, &mut st).await?;
            let end = offset.saturating_add(size as u64).min(st.size());
            if offset >= end {
                return Ok(Vec::new());
            }
            let bs = self.bs;
            let mut pos = offset;
            while pos < end {
                let index = pos / bs;
                let from = (pos % bs) as usize;
                let len = ((bs - pos % bs).min(end - pos)) as usize;
                if let Some(d) = st.dirty.get_mut(&index) {
                    if !d.complete && !d.covers(from, from + len) {
                        let base = self.base(d).await?;
                        d.rebuild(&base);
                    }
                    let mut copy = Vec::with_capacity(len);
                    copy_part(&mut copy, &d.data, from, len);
                    pieces.push(Piece::Bytes(copy.into()));
                } else if let Some(b) = st.map.get(&index) {
                    pieces.push(Piece::Block { block: b.clone(), from, len });
                } else {
                    pieces.push(Piece::Zero(len));
                }
                pos += len as u64;
            }
            // Read-ahead for a sequential reader.
            let sequential = offset == st.next_read || offset == 0;
            st.next_read = end;
            if sequential && self.readahead > 0 {
                let first = (end / bs).max(st.readahead_to);
                let last = end / bs + self.readahead;
                for index in first..=last {
                    if let Some(b) = st.map.get(&index)
                        && !st.dirty.contains_key(&index)
                    {
                        let (blocks, b) = (self.blocks.clone(), b.clone());
                        tokio::spawn(async move {
                            let _ = blocks.whole(&b).await;
                        });
                    }
                }
                st.readahead_to = last + 1;
            }
        }
        let fetched = futures::future::try_join_all(pieces.iter().map(|p| async move {
            match p {
                Piece::Block { block, from, len } => self.blocks.range(block, *from, *len).await,
                _ => Ok(Vec::new()),
            }
        }))
        .await?;
        let mut out = Vec::new();
        for (p, got) in pieces.into_iter().zip(fetched) {
            match p {
                Piece::Zero(n) => blocks::zeros(&mut out, n),
                Piece::Bytes(b) => out.push(b),
                Piece::Block { .. } => out.extend(got),
            }
        }
        Ok(out)
    }

    // --- writing ------------------------------------------------------------------------------

    /// Accepts a write into the dirty blocks (reserving quota first); uploads blocks it
    /// completes, and commits when the file's unflushed bytes pass the limit.
    pub async fn write(&self, c: Ctx, st: &mut FileState, offset: u64, data: &[u8]) -> FsResult<u32> {
        self.forget_attrs(st.ino);
        self.ensure_loaded(c, st).await?;
        let end = offset.checked_add(data.len() as u64).ok_or(libc::EFBIG)?;
        let bs = self.bs;
        // Quota first: nothing is accepted that a commit could not store.
        let mut growth = 0u64;
        let mut pos = offset;
        while pos < end {
            let index = pos / bs;
            let n = (bs - pos % bs).min(end - pos);
            let block_end = (pos % bs + n) as usize;
            let cur = match st.dirty.get(&index) {
                Some(d) => d.len(),
                None => st.map.get(&index).map_or(0, |b| b.len as usize),
            };
            growth += block_end.saturating_sub(cur) as u64;
            pos += n;
        }
        let want = st.growth() + growth;
        if st.quota_limited && want > st.held {
            self.reserve(c, st, want).await?;
        }
        let mut pos = offset;
        while pos < end {
            let index = pos / bs;
            let from = (pos % bs) as usize;
            let n = (bs - pos % bs).min(end - pos) as usize;
            let base = st.map.get(&index).cloned();
            let d = st.dirty.entry(index).or_insert_with(|| {
                let mut d = Dirty::new(base);
                // The block's whole size at once: sequential writes never regrow it.
                Arc::make_mut(&mut d.data).reserve_exact(bs as usize);
                d
            });
            // A write into a block held whole in L1 (typically one this mount rewrote before)
            // starts from a copy of it: one copy, where rebuilding at flush would first zero-fill
            // the buffer up to the write and then copy the block under it.
            if !d.complete
                && d.extents.is_empty()
                && from > 0
                && let Some(b) = d.base.as_ref().filter(|b| self.blocks.is_cached(b))
            {
                let base = self.blocks.range(b, 0, b.len as usize).await?;
                d.rebuild(&base);
            }
            d.cancel_upload();
            let buf = Arc::make_mut(&mut d.data);
            let src = &data[(pos - offset) as usize..(pos - offset) as usize + n];
            if buf.len() == from {
                // Appending (the sequential case): one copy, no zero-fill first.
                buf.extend_from_slice(src);
            } else {
                if buf.len() < from + n {
                    buf.resize(from + n, 0);
                }
                buf[from..from + n].copy_from_slice(src);
            }
            d.add_extent(from, from + n);
            if d.complete && d.len() == bs as usize {
                self.start_upload(c, index, d).await?;
            }
            pos += n as u64;
        }
        st.written_end = st.written_end.max(end);
        if st.dirty.len() * bs as usize > self.dirty_limit {
            self.commit(c, st, false).await?;
        }
        Ok(data.len() as u32)
    }

    /// Holds `want` bytes of quota for the file's unflushed writes: a chunk more when it fits,
    /// exactly `want` otherwise, EDQUOT when not even that fits.
    async fn reserve(&self, c: Ctx, st: &mut FileState, want: u64) -> FsResult<()> {
        for bytes in [want.max(st.held + RESERVE_CHUNK), want] {
            let req = pb::ReserveRequest { ctx: self.ctx(c), ino: st.ino, bytes };
            match self.rpc().reserve(req).await {
                Ok(_) => {
                    st.held = bytes;
                    return Ok(());
                }
                Err(s) => {
                    let errno = errno_of(s);
                    if errno != libc::EDQUOT || bytes == want {
                        return Err(errno);
                    }
                }
            }
        }
        Err(libc::EDQUOT)
    }

    async fn block_id(&self, c: Ctx) -> FsResult<u64> {
        let mut ids = self.ids.lock().await;
        if ids.is_empty() {
            let req = pb::AllocateBlocksRequest { ctx: self.ctx(c), count: ID_BATCH };
            let mut got = self.rpc().allocate_blocks(req).await.map_err(errno_of)?.into_inner().ids;
            got.reverse();
            *ids = got;
        }
        ids.pop().ok_or(libc::EIO)
    }

    /// Starts uploading a complete dirty block as a new object.
    async fn start_upload(&self, c: Ctx, index: u64, d: &mut Dirty) -> FsResult<()> {
        debug_assert!(d.complete);
        let id = self.block_id(c).await?;
        let data = d.data.clone();
        let len = d.len();
        let (blocks, kind) = (self.blocks.clone(), self.compression);
        let (base, extents) = (d.base.clone(), d.extents.clone());
        // A block rewritten in place is likely rewritten or read again: keep it in L1.
        let cache = base.is_some();
        d.upload = Some(Upload::Running(tokio::spawn(async move {
            blocks.upload(index, id, data, len, kind, base.as_ref(), &extents, cache).await
        })));
        Ok(())
    }

    /// Makes every dirty block complete (reading its base where needed) and uploading.
    async fn upload_all(&self, c: Ctx, st: &mut FileState) -> FsResult<()> {
        let indexes: Vec<u64> = st.dirty.iter().filter(|(_, d)| d.upload.is_none()).map(|(i, _)| *i).collect();
        for index in indexes {
            let d = st.dirty.get_mut(&index).expect("listed above");
            if !d.complete {
                let base = self.base(d).await?;
                d.rebuild(&base);
            }
            self.start_upload(c, index, d).await?;
        }
        for d in st.dirty.values_mut() {
            if let Some(Upload::Running(h)) = d.upload.take() {
                match h.await {
                    Ok(Ok(b)) => d.upload = Some(Upload::Done(b)),
                    Ok(Err(e)) => return Err(e),
                    Err(_) => return Err(libc::EIO),
                }
            }
        }
        Ok(())
    }

    /// Uploads the dirty blocks and commits them; with `durable` the reply waits for the
    /// server's disk. A stale base is rebuilt on the current block and the commit retried.
    pub async fn commit(&self, c: Ctx, st: &mut FileState, durable: bool) -> FsResult<()> {
        if !st.has_dirty() {
            return Ok(());
        }
        for _ in 0..COMMIT_ATTEMPTS {
            self.upload_all(c, st).await?;
            let changes: Vec<pb::BlockChange> = st
                .dirty
                .iter()
                .map(|(index, d)| pb::BlockChange {
                    index: *index,
                    base_version: d.base.as_ref().map_or(0, |b| b.version),
                    block: match &d.upload {
                        Some(Upload::Done(b)) => Some(b.clone()),
                        _ => None,
                    },
                })
                .collect();
            if changes.iter().any(|ch| ch.block.is_none()) {
                return Err(libc::EIO);
            }
            // Quota held beyond what this commit stores stays reserved for later writes.
            let reserved = st.held.saturating_sub(st.growth());
            let req = pb::CommitBlocksRequest {
                ctx: self.ctx(c),
                ino: st.ino,
                open_id: 0,
                changes,
                end: st.written_end,
                mtime: None,
                durable,
                reserved,
            };
            // Taken before the server applies the commit: a change racing with it voids the attributes.
            let epoch = self.epoch();
            match self.rpc().commit_blocks(req).await {
                Ok(r) => {
                    let r = r.into_inner();
                    let a = r.attr.unwrap_or_default();
                    for b in r.blocks {
                        st.map.insert(b.index, b);
                    }
                    st.dirty.clear();
                    st.held = reserved;
                    st.written_end = 0;
                    st.server_size = a.size;
                    st.change = Some(a.change);
                    self.remember_attrs(Some(a), epoch);
                    return Ok(());
                }
                Err(s) if s.code() == tonic::Code::Aborted => {
                    // Another mount changed some of these blocks: rebuild on their versions.
                    tracing::debug!(ino = st.ino, "block-map commit was stale; rebuilding on the current blocks");
                    self.load_map(c, st).await?;
                    let map = st.map.clone();
                    for (index, d) in st.dirty.iter_mut() {
                        let cur = map.get(index).cloned();
                        if cur.as_ref().map(|b| b.version) != d.base.as_ref().map(|b| b.version) {
                            d.cancel_upload();
                            d.base = cur;
                            d.complete = false;
                        }
                    }
                }
                Err(s) => return Err(errno_of(s)),
            }
        }
        tracing::error!(ino = st.ino, attempts = COMMIT_ATTEMPTS, "the block map kept changing under this commit");
        Err(libc::EIO)
    }

    /// Zeroes `[start, end)`: whole blocks become holes, partial ones are rewritten.
    pub async fn zero_range(&self, c: Ctx, st: &mut FileState, start: u64, end: u64) -> FsResult<()> {
        self.commit(c, st, false).await?;
        self.ensure_loaded(c, st).await?;
        let bs = self.bs;
        let size = st.size();
        let mut holes = Vec::new();
        let mut pos = start;
        while pos < end {
            let index = pos / bs;
            let n = (bs - pos % bs).min(end - pos);
            if pos.is_multiple_of(bs) && n == bs {
                if let Some(b) = st.map.get(&index) {
                    holes.push(pb::BlockChange { index, base_version: b.version, block: None });
                }
            } else if pos < size && st.map.contains_key(&index) {
                let zeros = vec![0u8; n.min(size - pos) as usize];
                self.write(c, st, pos, &zeros).await?;
            }
            pos += n;
        }
        self.commit(c, st, false).await?;
        if !holes.is_empty() {
            let req = pb::CommitBlocksRequest {
                ctx: self.ctx(c),
                ino: st.ino,
                changes: holes,
                reserved: st.held,
                ..Default::default()
            };
            let a = self.rpc().commit_blocks(req).await.map_err(errno_of)?.into_inner().attr.unwrap_or_default();
            st.change = Some(a.change);
            self.forget_attrs(st.ino);
            self.load_map(c, st).await?;
        }
        Ok(())
    }
}

/// Appends `len` bytes of `src` from `from`; what `src` lacks reads as zeros.
fn copy_part(out: &mut Vec<u8>, src: &[u8], from: usize, len: usize) {
    let have = src.len().saturating_sub(from).min(len);
    if have > 0 {
        out.extend_from_slice(&src[from..from + have]);
    }
    out.resize(out.len() + (len - have), 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_merge_and_a_block_written_over_its_base_is_complete() {
        let base = pb::BlockRef { len: 100, ..Default::default() };
        let mut d = Dirty::new(Some(base));
        assert!(!d.complete);
        d.add_extent(10, 20);
        d.add_extent(40, 50);
        d.add_extent(20, 30);
        assert_eq!(d.extents, vec![(10, 30), (40, 50)]);
        assert!(d.covers(12, 30) && !d.covers(25, 45));
        d.add_extent(0, 10);
        d.add_extent(25, 120);
        assert_eq!(d.extents, vec![(0, 120)]);
        assert!(d.complete, "written from 0 past the base's end");
        assert_eq!(d.len(), 120);
    }

    #[test]
    fn rebuild_lays_extents_over_a_new_base() {
        let mut d = Dirty::new(Some(pb::BlockRef { len: 8, ..Default::default() }));
        d.data = Arc::new(b"..XY....".to_vec());
        d.add_extent(2, 4);
        d.rebuild(&[Bytes::from_static(b"abcd"), Bytes::from_static(b"efgh")]);
        assert_eq!(d.data.as_slice(), b"abXYefgh");
        // A shorter new base: the block keeps the extents, zeros between.
        d.base = Some(pb::BlockRef { len: 1, ..Default::default() });
        d.rebuild(&[Bytes::from_static(b"z")]);
        assert_eq!(d.data.as_slice(), b"z\0XY");
    }

    #[test]
    fn seek_data_and_hole_follow_the_blocks() {
        let mut st = FileState { server_size: 10 * 4, loaded: true, ..Default::default() };
        st.map.insert(1, pb::BlockRef::default());
        st.map.insert(2, pb::BlockRef::default());
        assert_eq!(st.seek(0, libc::SEEK_DATA, 4), Ok(4));
        assert_eq!(st.seek(5, libc::SEEK_DATA, 4), Ok(5));
        assert_eq!(st.seek(5, libc::SEEK_HOLE, 4), Ok(12));
        assert_eq!(st.seek(13, libc::SEEK_DATA, 4), Err(libc::ENXIO));
        assert_eq!(st.seek(40, libc::SEEK_HOLE, 4), Err(libc::ENXIO));
        assert_eq!(st.seek(39, libc::SEEK_HOLE, 4), Ok(39));
    }
}
