//! File data: blocks read through the L1 cache, writes buffered per block and uploaded as new
//! immutable objects, commits of the block map.
//!
//! Each inode a mount uses has an [`OpenFile`]: the block map read at open (close-to-open
//! consistency), the size, and the blocks this mount wrote but has not committed ([`Dirty`]). A
//! dirty block holds only the 64 KiB chunks written to it (each completed from the block it was
//! built on, `base`, where the write covers part of it) and remembers the byte ranges written
//! (`extents`); the rest of the block stays where the base stored it, so a 4 KiB write into a
//! large block copies, uploads and keeps in memory one chunk. A write that ends a block this
//! mount wrote whole starts its upload at once, so a sequential writer's uploads run in parallel
//! with its later writes; flush, fsync, release and a full buffer upload the rest and commit them all
//! in one `CommitBlocks`, each change naming the version of its base. When another mount changed
//! one of those blocks meanwhile the server refuses the commit as stale: the block map is read
//! again, the extents are laid over the new bases, and the commit is retried.
//!
//! Quota: before write() accepts bytes that grow the stored data, the session reserves quota for
//! them on the server (`Reserve`, in chunks), so write() itself fails with EDQUOT and accepted
//! bytes are never lost at flush.

//!
//! - [`dirty`]: write buffers and dirty blocks; [`state`]: an inode's state in this mount;
//!   [`attrs`]: attributes remembered from replies; this module: the data path itself (reads,
//!   writes, uploads, commits).

pub mod attrs;
pub mod dirty;
pub mod state;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use object_store::ObjectStore;
use tokio::sync::{Mutex, Semaphore};

use crate::blockstore::cache::BlockCache;
use crate::blockstore::disk::DiskCache;
use crate::blockstore::io::{self as blocks, BlockIo};
use crate::blockstore::{BackendSpec, LocalFiles, Tuning, open_backend_with};
use crate::fs::{Ctx, FsConfig, FsResult, errno_of};
use crate::metaclient::Session;
use crate::wire::pb;
pub use attrs::RecentAttrs;
pub use dirty::WriteData;
use dirty::{Dirty, Piece, Upload};
pub use state::{FileState, OpenFile};

/// Quota is reserved ahead in chunks of this many bytes (at least), to spare round trips.
const RESERVE_CHUNK: u64 = 32 << 20;
/// Block ids are allocated this many at a time.
const ID_BATCH: u32 = 64;
/// Commit attempts before giving up on a file another mount keeps changing.
const COMMIT_ATTEMPTS: usize = 32;

/// Moves blocks between the mount and the block store.
pub struct DataPath {
    session: Arc<Session>,
    blocks: BlockIo,
    bs: u64,
    compression: pb::compression::Kind,
    dirty_limit: usize,
    readahead: u64,
    ids: Mutex<Vec<u64>>,
    /// Attributes from this mount's recent replies.
    pub attrs: RecentAttrs,
}

/// Switches the mount to the volume's block-store spec whenever the server's changes (an admin
/// rotated its credentials): new requests use the new client, without a remount. Ends with the
/// session.
fn follow_spec(session: &Arc<Session>, store: &Arc<parking_lot::RwLock<Arc<dyn ObjectStore>>>, wait: Duration) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
    let mut changes = session.backend_spec();
    changes.mark_unchanged();
    let store = Arc::downgrade(store);
    rt.spawn(async move {
        while changes.changed().await.is_ok() {
            let Some(store) = store.upgrade() else { return };
            let json = changes.borrow_and_update().clone();
            let opened = serde_json::from_str::<BackendSpec>(&json)
                .map_err(|e| e.to_string())
                .and_then(|spec| open_backend_with(&spec, &Tuning::waiting(wait)).map_err(|e| e.to_string()));
            match opened {
                Ok(new) => {
                    *store.write() = new;
                    tracing::info!(
                        "the volume's block-store spec changed on the server (rotated credentials): using it now"
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the volume's new block-store spec cannot be used; keeping the old one")
                }
            }
        }
    });
}

impl DataPath {
    /// The data path of `volume`, whose blocks live in the store `spec` describes.
    pub fn new(
        session: Arc<Session>,
        volume: &pb::VolumeInfo,
        spec: &BackendSpec,
        cfg: &FsConfig,
        keys: Option<Arc<crate::crypto::VolumeKeys>>,
    ) -> Result<DataPath, String> {
        let bs = volume.block_size as u64;
        let local = LocalFiles::of(spec);
        let l2 = match (&cfg.disk_cache_dir, &local) {
            (Some(dir), None) => {
                Some(Arc::new(DiskCache::open(dir, &volume.uuid, cfg.disk_cache_bytes).map_err(|e| e.to_string())?))
            }
            (Some(dir), Some(_)) => {
                tracing::info!(dir = %dir.display(), "the volume's blocks are on local disk already: no disk cache");
                None
            }
            (None, _) => None,
        };
        let store = open_backend_with(spec, &Tuning::waiting(cfg.store_wait)).map_err(|e| e.to_string())?;
        let store = Arc::new(parking_lot::RwLock::new(store));
        follow_spec(&session, &store, cfg.store_wait);
        Ok(DataPath {
            session,
            blocks: BlockIo {
                store,
                cache: Arc::new(BlockCache::new(cfg.cache_bytes)),
                io: Arc::new(Semaphore::new(cfg.io_concurrency.max(1))),
                prefetch: Arc::new(Semaphore::new(cfg.prefetch_blocks)),
                volume_uuid: volume.uuid.as_str().into(),
                local,
                durable: Default::default(),
                l2,
                keys,
            },
            bs,
            dirty_limit: cfg.dirty_limit.max(4 * bs as usize),
            readahead: cfg.readahead_blocks,
            ids: Mutex::new(Vec::new()),
            attrs: RecentAttrs::new(cfg.attr_ttl),
            compression: volume.compression.map(|c| c.kind()).unwrap_or(pb::compression::Kind::Lz4),
        })
    }

    pub fn cache_stats(&self) -> (u64, u64) {
        (self.blocks.cache.hits.load(Ordering::Relaxed), self.blocks.cache.fetches.load(Ordering::Relaxed))
    }

    /// L2 counters: (hits, misses, damaged entries), if the mount has one.
    pub fn disk_cache_stats(&self) -> Option<(u64, u64, u64)> {
        let s = &self.blocks.l2.as_ref()?.stats;
        Some((s.hits.load(Ordering::Relaxed), s.misses.load(Ordering::Relaxed), s.damaged.load(Ordering::Relaxed)))
    }

    fn ctx(&self, c: Ctx) -> Option<pb::Context> {
        Some(self.session.ctx(c.uid, c.gid, c.pid))
    }

    fn rpc(&self) -> crate::metaclient::MetaRpc {
        self.session.rpc.clone()
    }

    // --- open and close ---------------------------------------------------------------------------

    /// At open: compares the server's change counter with what this mount saw last; when it
    /// differs the block map is read again. Returns whether the file changed (or this mount has
    /// no record of it, so the kernel's cache cannot be trusted).
    pub async fn opened(&self, c: Ctx, st: &mut FileState, attr: &pb::Attr, created: bool) -> FsResult<bool> {
        // An open may have changed the file (O_TRUNC) or found it changed: attributes are asked anew.
        self.attrs.forget(st.ino);
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
        self.attrs.forget(st.ino);
        st.written_end = 0;
        st.readahead_to = 0;
        self.load_map(c, st).await?;
        st.server_size = attr.size;
        st.change = Some(attr.change);
        Ok(())
    }

    // --- reading ------------------------------------------------------------------------------

    /// `size` bytes at `offset` (fewer at the end of the file), as pieces that share the cached
    /// blocks' bytes where they can.
    pub async fn read(&self, c: Ctx, f: &OpenFile, offset: u64, size: u32) -> FsResult<Vec<Bytes>> {
        let mut pieces = Vec::new();
        let sequential;
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
                if let Some(d) = st.dirty.get(&index) {
                    d.pieces(from, len, &mut pieces);
                } else if let Some(b) = st.map.get(&index) {
                    pieces.push(Piece::Block { block: b.clone(), from, len });
                } else {
                    pieces.push(Piece::Zero(len));
                }
                pos += len as u64;
            }
            // Read-ahead for a sequential reader: the blocks this read touches are fetched whole
            // (below), those after them in the background.
            sequential = (offset == st.next_read || offset == 0) && self.readahead > 0;
            st.next_read = end;
            if sequential {
                let first = ((end - 1) / bs + 1).max(st.readahead_to);
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
            } else {
                // A random reader: each block it misses in comes whole in the background, so its
                // next reads there cost no request (the read itself fetches only its chunks).
                for p in &pieces {
                    if let Piece::Block { block, .. } = p {
                        self.blocks.prefetch(block);
                    }
                }
            }
        }
        let fetched = futures::future::try_join_all(pieces.iter().map(|p| async move {
            match p {
                Piece::Block { block, from, len } => {
                    // One fetch for the block however many readers ask (concurrent ones wait for
                    // it); if it fails (a damaged chunk elsewhere in the block), the range is
                    // read piece by piece and only what it touches decides.
                    if sequential {
                        let _ = self.blocks.whole(block).await;
                    }
                    self.blocks.range(block, *from, *len).await
                }
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
    pub async fn write(&self, c: Ctx, st: &mut FileState, offset: u64, mut data: WriteData<'_>) -> FsResult<u32> {
        self.attrs.forget(st.ino);
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
            let d = st.dirty.entry(index).or_insert_with(|| Dirty::new(base));
            d.cancel_upload();
            if let Err(e) = d.write(&self.blocks, from, &mut data, (pos - offset) as usize, n).await {
                if d.extents.is_empty() {
                    st.dirty.remove(&index);
                }
                return Err(e);
            }
            // A write that ends a block written whole starts its upload (a sequential writer will
            // not come back to it); random writes wait for the commit, which uploads once.
            if from + n == bs as usize && d.written_whole(bs as usize) {
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

    /// Starts uploading a dirty block as a new object (its chunks that must be stored first
    /// taken from the base where it was not written).
    async fn start_upload(&self, c: Ctx, index: u64, d: &mut Dirty) -> FsResult<()> {
        let upload = self.upload(c, index, d).await?;
        d.upload = Some(Upload::Running(tokio::spawn(upload)));
        Ok(())
    }

    /// The upload of a dirty block as a new object, to run.
    async fn upload(
        &self,
        c: Ctx,
        index: u64,
        d: &mut Dirty,
    ) -> FsResult<impl Future<Output = FsResult<pb::BlockRef>> + Send + 'static> {
        let chunks = d.stored_chunks(&self.blocks).await?;
        let id = self.block_id(c).await?;
        let len = d.len();
        let (blocks, kind, base) = (self.blocks.clone(), self.compression, d.base.clone());
        // A block rewritten in place is likely rewritten or read again: keep it in L1.
        let cache = base.is_some();
        Ok(async move { blocks.upload(index, id, chunks, len, kind, base.as_ref(), cache).await })
    }

    /// Uploads every dirty block not uploaded yet and waits for all uploads. A single block
    /// (an fsync after small writes) is uploaded by this task itself: on a FUSE reader thread its
    /// encoding and a local store's write then need no other thread (see `blocking`).
    async fn upload_all(&self, c: Ctx, st: &mut FileState) -> FsResult<()> {
        let indexes: Vec<u64> = st.dirty.iter().filter(|(_, d)| d.upload.is_none()).map(|(i, _)| *i).collect();
        if let [index] = indexes[..]
            && st.dirty.len() == 1
        {
            let d = st.dirty.get_mut(&index).expect("listed above");
            let b = self.upload(c, index, d).await?.await?;
            d.upload = Some(Upload::Done(b));
            return Ok(());
        }
        for index in indexes {
            let d = st.dirty.get_mut(&index).expect("listed above");
            self.start_upload(c, index, d).await?;
        }
        // Every upload is waited for: one that failed is started again by the next call, none is
        // left to report an old failure then.
        let mut failed = Ok(());
        for d in st.dirty.values_mut() {
            if let Some(Upload::Running(h)) = d.upload.take() {
                match h.await {
                    Ok(Ok(b)) => d.upload = Some(Upload::Done(b)),
                    Ok(Err(e)) => failed = Err(e),
                    Err(_) => failed = Err(libc::EIO),
                }
            }
        }
        failed
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
            let epoch = self.attrs.epoch();
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
                    self.attrs.remember(Some(a), epoch);
                    return Ok(());
                }
                Err(s) if s.code() == tonic::Code::Aborted => {
                    // Another mount changed some of these blocks: rebuild on their versions.
                    tracing::debug!(ino = st.ino, "block-map commit was stale; rebuilding on the current blocks");
                    self.load_map(c, st).await?;
                    for (index, d) in st.dirty.iter_mut() {
                        let cur = st.map.get(index).cloned();
                        if cur.as_ref().map(|b| b.version) != d.base.as_ref().map(|b| b.version) {
                            d.rebase(&self.blocks, cur).await?;
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
                self.write(c, st, pos, WriteData::Slice(&zeros)).await?;
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
            self.attrs.forget(st.ino);
            self.load_map(c, st).await?;
        }
        Ok(())
    }
}
