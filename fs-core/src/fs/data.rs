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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::{Mutex, MutexGuard, Semaphore};

use crate::blockstore::cache::BlockCache;
use crate::blockstore::io::{self as blocks, BlockIo};
use crate::blockstore::{BackendSpec, LocalFiles, codec, open_backend};
use crate::fs::{Ctx, FsConfig, FsResult, errno_of};
use crate::metaclient::Session;
use crate::wire::pb;

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

/// Logical bytes per chunk: a dirty block keeps, and a rewrite uploads, only the chunks written.
const CS: usize = codec::CHUNK_SIZE;

/// The pieces of `[from, end)` that fall in each chunk: (position, chunk, offset in the chunk,
/// length).
fn chunk_pieces(from: usize, end: usize) -> impl Iterator<Item = (usize, u32, usize, usize)> {
    let mut at = from;
    std::iter::from_fn(move || {
        (at < end).then(|| {
            let (c, off) = (at / CS, at % CS);
            let k = (CS - off).min(end - at);
            at += k;
            (at - k, c as u32, off, k)
        })
    })
}

/// Logical bytes `[start, end)` of chunk `c` in a block of `len` bytes.
fn chunk_span(c: u32, len: usize) -> (usize, usize) {
    let start = c as usize * CS;
    (start, (start + CS).min(len.max(start)))
}

/// The bytes of one write: a slice, or the chunk-sized pieces the FUSE reader read a write's
/// payload into (docs/decisions.md, "Writes without a copy"). A piece that lands exactly on a chunk
/// of the file becomes that chunk as it is, so a sequential writer's bytes are not copied again
/// between the kernel and the upload.
pub enum WriteData<'a> {
    Slice(&'a [u8]),
    /// Consecutive pieces, each [`CS`] bytes but the last (`None` once taken), and their length.
    Pieces(Vec<Option<Vec<u8>>>, usize),
}

impl WriteData<'_> {
    /// Pieces as read: every piece but the last must be [`CS`] bytes.
    pub fn pieces(pieces: Vec<Vec<u8>>) -> WriteData<'static> {
        debug_assert!(pieces.iter().rev().skip(1).all(|p| p.len() == CS), "a piece before the last is not a chunk");
        let len = pieces.iter().map(|p| p.len()).sum();
        WriteData::Pieces(pieces.into_iter().map(Some).collect(), len)
    }

    pub fn len(&self) -> usize {
        match self {
            WriteData::Slice(s) => s.len(),
            WriteData::Pieces(_, len) => *len,
        }
    }

    /// Calls `f` with the consecutive slices of `[start, start + len)`.
    fn each(&self, start: usize, len: usize, mut f: impl FnMut(&[u8])) {
        match self {
            WriteData::Slice(s) => f(&s[start..start + len]),
            WriteData::Pieces(p, _) => {
                let (mut at, end) = (start, start + len);
                while at < end {
                    let piece = p[at / CS].as_deref().expect("a taken piece is never read again");
                    let off = at % CS;
                    let k = (piece.len() - off).min(end - at);
                    f(&piece[off..off + k]);
                    at += k;
                }
            }
        }
    }

    /// The piece that is exactly `[start, start + len)`, taken without a copy, if there is one.
    fn take(&mut self, start: usize, len: usize) -> Option<Vec<u8>> {
        let WriteData::Pieces(p, _) = self else { return None };
        let slot = p.get_mut(start / CS).filter(|_| start.is_multiple_of(CS))?;
        if slot.as_ref()?.len() != len {
            return None;
        }
        slot.take()
    }
}

/// A block this mount wrote and has not committed.
struct Dirty {
    /// Chunk number → the chunk's bytes as this mount sees them: the base's bytes (none past its
    /// valid length) with this mount's writes laid over, and zeros past the vector's end. A chunk
    /// not here is the base's, unchanged (zeros past the base's valid length), so a small write
    /// into a large block holds, and uploads, one chunk.
    chunks: BTreeMap<u32, Arc<Vec<u8>>>,
    /// Sorted, disjoint, non-adjacent byte ranges written by this mount: laid over a new base
    /// when another mount changed the one these were built on.
    extents: Vec<(usize, usize)>,
    /// The committed block this one is built on (`None`: the index held no block).
    base: Option<pb::BlockRef>,
    upload: Option<Upload>,
}

impl Dirty {
    fn new(base: Option<pb::BlockRef>) -> Dirty {
        Dirty { chunks: BTreeMap::new(), extents: Vec::new(), base, upload: None }
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
    }

    /// Whether this mount wrote the whole `bs`-byte block: a sequential writer that reaches its
    /// end is done with it.
    fn written_whole(&self, bs: usize) -> bool {
        self.extents == [(0, bs)]
    }

    /// Whether chunk `c`, not written, could stay where the base stored it: the base shares its
    /// chunks and holds all of this one (it does not reach past the base's valid bytes).
    fn may_keep(&self, c: u32) -> bool {
        self.base.as_ref().is_some_and(|b| blocks::shares_chunks(b) && chunk_span(c, self.len()).1 <= b.len as usize)
    }

    /// The chunks not written that this block stores itself: those it cannot keep, and, when the
    /// kept ones would spread over more than [`blocks::MAX_SHARED`] objects, those of the objects
    /// holding fewest of them until half that many remain. A block rewritten at random places thus
    /// stays readable in a few requests, and re-stores a few single chunks now and then instead
    /// of its whole self.
    async fn to_store(&self, io: &BlockIo) -> FsResult<Vec<u32>> {
        let count = self.len().div_ceil(CS) as u32;
        let unwritten: Vec<u32> = (0..count).filter(|c| !self.chunks.contains_key(c)).collect();
        // A block written whole needs nothing of its base (not even a readable chunk table).
        let Some(base) = self.base.as_ref().filter(|b| blocks::shares_chunks(b) && !unwritten.is_empty()) else {
            return Ok(unwritten);
        };
        let objects = io.chunk_objects(base).await?;
        let mut kept: HashMap<u64, Vec<u32>> = HashMap::new();
        let mut out = Vec::new();
        for c in unwritten {
            match objects.get(c as usize) {
                Some(&Some(o)) if self.may_keep(c) => kept.entry(o).or_default().push(c),
                // A chunk of zeros is kept at no cost: its entry is copied.
                Some(None) if self.may_keep(c) => {}
                _ => out.push(c),
            }
        }
        if kept.len() > blocks::MAX_SHARED {
            let mut by_size: Vec<Vec<u32>> = kept.into_values().collect();
            by_size.sort_by_key(|cs| cs.len());
            let moved = by_size.len() - blocks::MAX_SHARED / 2;
            out.extend(by_size.into_iter().take(moved).flatten());
        }
        Ok(out)
    }

    /// Chunk `c` as the base has it (its bytes up to the base's valid length).
    async fn base_chunk(&self, io: &BlockIo, c: u32) -> FsResult<Vec<u8>> {
        let start = c as usize * CS;
        let have = self.base_len().saturating_sub(start).min(CS);
        let mut v = Vec::with_capacity(CS);
        if let Some(b) = self.base.as_ref().filter(|_| have > 0) {
            for p in io.range(b, start, have).await? {
                v.extend_from_slice(&p);
            }
        }
        Ok(v)
    }

    /// Lays `src` over the block at `from`: each chunk it touches is taken from the base first
    /// unless the write covers all the base has in it.
    /// `src_at..src_at + len` of `src` is written at `from`. A piece of `src` that covers a whole
    /// chunk (or all the chunk holds) becomes the chunk without a copy.
    async fn write(
        &mut self,
        io: &BlockIo,
        from: usize,
        src: &mut WriteData<'_>,
        src_at: usize,
        len: usize,
    ) -> FsResult<()> {
        for (at, c, off, k) in chunk_pieces(from, from + len) {
            let pos = src_at + (at - from);
            let in_base = self.base_len().saturating_sub(c as usize * CS).min(CS);
            let covered = off == 0 && (k == CS || (k >= in_base && !self.chunks.contains_key(&c)));
            if covered && let Some(piece) = src.take(pos, k) {
                self.chunks.insert(c, Arc::new(piece));
                continue;
            }
            if !self.chunks.contains_key(&c) {
                let v = if off == 0 && k >= in_base { Vec::with_capacity(CS) } else { self.base_chunk(io, c).await? };
                self.chunks.insert(c, Arc::new(v));
            }
            let v = Arc::make_mut(self.chunks.get_mut(&c).expect("inserted above"));
            if v.len() == off {
                // Appending (the sequential case): one copy, no zero-fill first.
                src.each(pos, k, |b| v.extend_from_slice(b));
            } else {
                if v.len() < off + k {
                    v.resize(off + k, 0);
                }
                let mut o = off;
                src.each(pos, k, |b| {
                    v[o..o + b.len()].copy_from_slice(b);
                    o += b.len();
                });
            }
        }
        self.add_extent(from, from + len);
        Ok(())
    }

    /// `[from, from + len)` of the block as read pieces: this mount's chunks shared without a copy,
    /// the base's bytes where a chunk is the base's, zeros past either.
    fn pieces(&self, from: usize, len: usize, out: &mut Vec<Piece>) {
        let base_len = self.base_len();
        for (at, c, off, k) in chunk_pieces(from, from + len) {
            match self.chunks.get(&c) {
                Some(v) => {
                    let have = v.len().saturating_sub(off).min(k);
                    if have > 0 {
                        out.push(Piece::Bytes(codec::share(v, off..off + have)));
                    }
                    out.push(Piece::Zero(k - have));
                }
                None => {
                    let have = base_len.saturating_sub(at).min(k);
                    if let Some(b) = self.base.as_ref().filter(|_| have > 0) {
                        out.push(Piece::Block { block: b.clone(), from: at, len: have });
                    }
                    out.push(Piece::Zero(k - have));
                }
            }
        }
    }

    /// The chunks this block stores, each exactly its length in the block: written ones, and
    /// those [`Dirty::to_store`] names, filled from the base.
    async fn stored_chunks(&mut self, io: &BlockIo) -> FsResult<BTreeMap<u32, Bytes>> {
        let len = self.len();
        let mut out = BTreeMap::new();
        for c in self.to_store(io).await? {
            let (start, end) = chunk_span(c, len);
            if self.base_len() <= start {
                // Nothing of the base in it: zeros, stored as a zero chunk, no buffer.
                out.insert(c, Bytes::from_static(&codec::ZEROS[..end - start]));
                continue;
            }
            let v = self.base_chunk(io, c).await?;
            self.chunks.insert(c, Arc::new(v));
        }
        for (&c, v) in self.chunks.iter_mut() {
            let (start, end) = chunk_span(c, len);
            if v.len() < end - start {
                Arc::make_mut(v).resize(end - start, 0);
            }
            out.insert(c, codec::share(v, 0..end - start));
        }
        Ok(out)
    }

    /// After another mount changed the block this one was built on: `base` becomes the block's
    /// current version and this mount's extents are laid over it again.
    async fn rebase(&mut self, io: &BlockIo, base: Option<pb::BlockRef>) -> FsResult<()> {
        self.cancel_upload();
        self.base = base;
        let written: Vec<u32> = self.chunks.keys().copied().collect();
        for c in written {
            let mut fresh = self.base_chunk(io, c).await?;
            let old = &self.chunks[&c];
            let (lo, hi) = (c as usize * CS, (c as usize + 1) * CS);
            for &(s, e) in &self.extents {
                let (s, e) = (s.max(lo) - lo, e.min(hi).saturating_sub(lo));
                if s < e {
                    if fresh.len() < e {
                        fresh.resize(e, 0);
                    }
                    fresh[s..e].copy_from_slice(&old[s..e]);
                }
            }
            self.chunks.insert(c, Arc::new(fresh));
        }
        Ok(())
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

    /// The size this mount sees given attributes `a` (the server's, or a pending file's):
    /// unflushed writes raise it, and attributes older than this mount's last commit or open of
    /// the file (a smaller change counter: read before a commit that finished while this waited
    /// for the file) give way to the size that commit left.
    pub async fn local_size(&self, a: &pb::Attr) -> u64 {
        let st = self.st.lock().await;
        if st.has_dirty() {
            a.size.max(st.written_end)
        } else if st.change.is_some_and(|c| c > a.change) {
            st.server_size
        } else {
            a.size
        }
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
    /// The data path of `volume`, whose blocks live in the store `spec` describes.
    pub fn new(
        session: Arc<Session>,
        volume: &pb::VolumeInfo,
        spec: &BackendSpec,
        cfg: &FsConfig,
    ) -> Result<DataPath, String> {
        let bs = volume.block_size as u64;
        Ok(DataPath {
            session,
            blocks: BlockIo {
                store: open_backend(spec).map_err(|e| e.to_string())?,
                cache: Arc::new(BlockCache::new(cfg.cache_bytes)),
                io: Arc::new(Semaphore::new(cfg.io_concurrency.max(1))),
                volume_uuid: volume.uuid.as_str().into(),
                local: LocalFiles::of(spec),
                durable: Default::default(),
            },
            bs,
            dirty_limit: cfg.dirty_limit.max(4 * bs as usize),
            readahead: cfg.readahead_blocks,
            ids: Mutex::new(Vec::new()),
            epoch: AtomicU64::new(0),
            recent: Default::default(),
            attr_ttl: cfg.attr_ttl,
            compression: volume.compression.map(|c| c.kind()).unwrap_or(pb::compression::Kind::Lz4),
        })
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
                if let Some(d) = st.dirty.get(&index) {
                    d.pieces(from, len, &mut pieces);
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
    pub async fn write(&self, c: Ctx, st: &mut FileState, offset: u64, mut data: WriteData<'_>) -> FsResult<u32> {
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
            self.forget_attrs(st.ino);
            self.load_map(c, st).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_merge() {
        let base = pb::BlockRef { len: 100, ..Default::default() };
        let mut d = Dirty::new(Some(base));
        d.add_extent(10, 20);
        d.add_extent(40, 50);
        d.add_extent(20, 30);
        assert_eq!(d.extents, vec![(10, 30), (40, 50)]);
        d.add_extent(0, 10);
        d.add_extent(25, 120);
        assert_eq!(d.extents, vec![(0, 120)]);
        assert_eq!(d.len(), 120);
    }

    fn io() -> BlockIo {
        BlockIo {
            store: Arc::new(object_store::memory::InMemory::new()),
            cache: Arc::new(BlockCache::new(64 << 20)),
            io: Arc::new(Semaphore::new(4)),
            volume_uuid: "v".into(),
            local: None,
            durable: Default::default(),
        }
    }

    /// Stores `data` as block `id` and returns its block-map entry.
    async fn stored(io: &BlockIo, id: u64, data: &[u8]) -> pb::BlockRef {
        let data = Arc::new(data.to_vec());
        let kind = pb::compression::Kind::Lz4;
        io.upload(0, id, codec::chunks(&data, data.len()), data.len(), kind, None, false).await.unwrap()
    }

    /// What a read of `[from, from + len)` of the dirty block returns.
    async fn read(io: &BlockIo, d: &Dirty, from: usize, len: usize) -> Vec<u8> {
        let mut pieces = Vec::new();
        d.pieces(from, len, &mut pieces);
        let mut out = Vec::new();
        for p in pieces {
            match p {
                Piece::Zero(n) => out.resize(out.len() + n, 0),
                Piece::Bytes(b) => out.extend_from_slice(&b),
                Piece::Block { block, from, len } => out.extend(io.range(&block, from, len).await.unwrap().concat()),
            }
        }
        out
    }

    /// Writes `bytes` at `at` of the dirty block, as one slice.
    async fn put(io: &BlockIo, d: &mut Dirty, at: usize, bytes: &[u8]) {
        d.write(io, at, &mut WriteData::Slice(bytes), 0, bytes.len()).await.unwrap();
    }

    /// Uploads the dirty block as block `id` and reads it back whole through an empty cache.
    async fn upload_and_read(io: &BlockIo, d: &mut Dirty, id: u64) -> (pb::BlockRef, Vec<u8>) {
        let chunks = d.stored_chunks(io).await.unwrap();
        let b = io.upload(0, id, chunks, d.len(), pb::compression::Kind::Lz4, d.base.as_ref(), false).await.unwrap();
        let fresh = BlockIo { cache: Arc::new(BlockCache::new(64 << 20)), ..io.clone() };
        let back = fresh.range(&b, 0, b.len as usize).await.unwrap().concat();
        (b, back)
    }

    /// `data` as the FUSE reader hands a write over: chunk-sized pieces.
    fn as_pieces(data: &[u8]) -> WriteData<'static> {
        WriteData::pieces(data.chunks(CS).map(|c| c.to_vec()).collect())
    }

    #[tokio::test]
    async fn attributes_read_before_this_mounts_commit_take_the_commits_size() {
        // A stat that read the attributes (size 0: a file just created) and then waited for the
        // file while this mount committed 4 KiB must answer 4096, not 0.
        let f = OpenFile::new(7);
        {
            let mut st = f.lock().await;
            st.change = Some(12);
            st.server_size = 4096;
        }
        let older = pb::Attr { ino: 7, size: 0, change: 0, ..Default::default() };
        assert_eq!(f.local_size(&older).await, 4096);
        // Attributes newer than the commit (another mount truncated since) are the answer.
        let newer = pb::Attr { ino: 7, size: 10, change: 13, ..Default::default() };
        assert_eq!(f.local_size(&newer).await, 10);
        let same = pb::Attr { ino: 7, size: 4096, change: 12, ..Default::default() };
        assert_eq!(f.local_size(&same).await, 4096);
    }

    #[tokio::test]
    async fn pieces_become_chunks_when_aligned_and_are_copied_when_not() {
        let io = io();
        let mut want: Vec<u8> = (0..4 * CS as u32).map(|i| (i % 251) as u8).collect();
        let base = stored(&io, 1, &want).await;
        // Aligned: chunks 1 and 2 whole, and the first 100 bytes of chunk 3 over the base.
        let mut d = Dirty::new(Some(base.clone()));
        let new: Vec<u8> = (0..2 * CS + 100).map(|i| (i % 13) as u8).collect();
        let mut src = as_pieces(&new);
        assert_eq!(src.len(), new.len());
        d.write(&io, CS, &mut src, 0, new.len()).await.unwrap();
        want[CS..3 * CS + 100].copy_from_slice(&new);
        let WriteData::Pieces(left, _) = &src else { unreachable!() };
        assert_eq!(left.iter().filter(|p| p.is_none()).count(), 2, "the two whole chunks were taken");
        assert_eq!(src.len(), new.len(), "taking pieces does not change the write's length");
        assert_eq!(read(&io, &d, 0, want.len()).await, want);
        let (_, back) = upload_and_read(&io, &mut d, 2).await;
        assert_eq!(back, want);
        // Not aligned: every piece is copied across chunk boundaries, nothing taken.
        let mut d = Dirty::new(Some(base));
        let mut src = as_pieces(&new);
        d.write(&io, 7, &mut src, 0, new.len()).await.unwrap();
        let mut want: Vec<u8> = (0..4 * CS as u32).map(|i| (i % 251) as u8).collect();
        want[7..7 + new.len()].copy_from_slice(&new);
        let WriteData::Pieces(left, _) = &src else { unreachable!() };
        assert!(left.iter().all(|p| p.is_some()));
        assert_eq!(read(&io, &d, 0, want.len()).await, want);
        let (_, back) = upload_and_read(&io, &mut d, 3).await;
        assert_eq!(back, want);
    }

    #[tokio::test]
    async fn a_short_last_piece_over_a_longer_chunk_is_copied_not_taken() {
        let io = io();
        let mut d = Dirty::new(None);
        put(&io, &mut d, 0, &vec![9u8; CS]).await;
        let mut src = as_pieces(&[1u8; 10]);
        d.write(&io, 0, &mut src, 0, 10).await.unwrap();
        let mut want = vec![9u8; CS];
        want[..10].fill(1);
        assert_eq!(read(&io, &d, 0, CS).await, want, "the chunk keeps its bytes past the short write");
    }

    #[tokio::test]
    async fn a_small_write_holds_and_uploads_one_chunk() {
        let io = io();
        let mut want: Vec<u8> = (0..3 * CS as u32 + 100).map(|i| (i % 241) as u8).collect();
        let base = stored(&io, 1, &want).await;
        let mut d = Dirty::new(Some(base.clone()));
        put(&io, &mut d, CS + 5, b"HELLO").await;
        want[CS + 5..CS + 10].copy_from_slice(b"HELLO");
        assert_eq!(d.chunks.keys().copied().collect::<Vec<_>>(), vec![1], "only the written chunk is held");
        assert_eq!(read(&io, &d, 0, want.len()).await, want);
        assert_eq!(d.stored_chunks(&io).await.unwrap().len(), 1, "the others stay where the base keeps them");
        let (b, back) = upload_and_read(&io, &mut d, 2).await;
        assert_eq!(b.shared, vec![1]);
        assert_eq!(back, want);
    }

    #[tokio::test]
    async fn writes_past_the_base_store_its_last_chunk_and_zeros_between() {
        let io = io();
        let mut want: Vec<u8> = (0..CS as u32 + 100).map(|i| (i % 239) as u8).collect();
        let base = stored(&io, 1, &want).await;
        let mut d = Dirty::new(Some(base));
        let at = 4 * CS + 7;
        put(&io, &mut d, at, b"tail").await;
        want.resize(at, 0);
        want.extend_from_slice(b"tail");
        assert_eq!(read(&io, &d, 0, want.len() + 10).await, [&want[..], &[0u8; 10][..]].concat());
        let stored: Vec<u32> = d.stored_chunks(&io).await.unwrap().keys().copied().collect();
        assert_eq!(stored, vec![1, 2, 3, 4], "the base's partial last chunk grows; zeros up to the write");
        let (b, back) = upload_and_read(&io, &mut d, 2).await;
        let objects = io.chunk_objects(&b).await.unwrap();
        assert_eq!(objects, [Some(1), Some(2), None, None, Some(2)], "chunks 2 and 3, all zeros, are stored nowhere");
        assert_eq!((b.shared.clone(), back), (vec![1], want));
    }

    #[tokio::test]
    async fn rewrites_spread_over_few_objects_and_compact_the_smallest() {
        let io = io();
        let mut want: Vec<u8> = (0..16 * CS as u32).map(|i| (i % 233) as u8).collect();
        let mut base = stored(&io, 1, &want).await;
        // One write into each of chunks 0, 1, 2, ... each committed as a new object: chunks kept
        // from older objects spread over more of them until a rewrite moves the smallest.
        for i in 0..12u32 {
            let mut d = Dirty::new(Some(base.clone()));
            put(&io, &mut d, i as usize * CS + 7, &[i as u8]).await;
            want[i as usize * CS + 7] = i as u8;
            let (b, back) = upload_and_read(&io, &mut d, 2 + i as u64).await;
            assert_eq!(back, want, "after rewrite {i}");
            assert!(b.shared.len() <= blocks::MAX_SHARED, "rewrite {i} names {} objects", b.shared.len());
            let stored = d.chunks.len();
            if i < blocks::MAX_SHARED as u32 {
                assert_eq!(stored, 1, "rewrite {i} stores only its chunk");
            } else {
                assert!(stored < 8, "rewrite {i} stores {stored} chunks, not the whole block");
            }
            base = b;
        }
        // A block of the first format (chunk_size 0) is stored whole by its rewrite.
        let old = pb::BlockRef { chunk_size: 0, ..base.clone() };
        let d = Dirty::new(Some(old));
        assert_eq!(d.to_store(&io).await.unwrap().len(), 16);
    }

    #[tokio::test]
    async fn a_block_written_whole_never_reads_its_base() {
        let io = io();
        // The base's object is gone (or unreadable): overwriting all of it must still work.
        let gone = pb::BlockRef { id: 99, len: 3 * CS as u32, chunk_size: CS as u32, chunks: 3, ..Default::default() };
        let mut d = Dirty::new(Some(gone));
        let want: Vec<u8> = (0..3 * CS as u32).map(|i| (i % 229) as u8).collect();
        put(&io, &mut d, 0, &want).await;
        let (b, back) = upload_and_read(&io, &mut d, 2).await;
        assert!(b.shared.is_empty());
        assert_eq!(back, want);
    }

    #[tokio::test]
    async fn a_truncated_base_reads_zeros_never_its_old_bytes() {
        let io = io();
        let old: Vec<u8> = vec![b'o'; 6 * CS];
        // Truncated to 100 bytes: the map's length drops, the object keeps the old bytes.
        let base = pb::BlockRef { len: 100, ..stored(&io, 1, &old).await };
        let mut d = Dirty::new(Some(base));
        put(&io, &mut d, 6 * CS - 1, &[7]).await;
        let mut want = old[..100].to_vec();
        want.resize(6 * CS - 1, 0);
        want.push(7);
        assert_eq!(read(&io, &d, 0, want.len()).await, want);
        let (b, back) = upload_and_read(&io, &mut d, 2).await;
        assert!(b.shared.is_empty(), "no chunk lies wholly inside the base's 100 valid bytes");
        assert_eq!(back, want);
    }

    #[tokio::test]
    async fn rebase_lays_the_writes_over_the_new_base() {
        let io = io();
        let old: Vec<u8> = vec![b'o'; 2 * CS];
        let mut d = Dirty::new(Some(stored(&io, 1, &old).await));
        put(&io, &mut d, 2, b"XY").await;
        put(&io, &mut d, CS + 3, b"Z").await;
        // Another mount stored a shorter block meanwhile: its bytes, these writes, zeros between.
        let new = stored(&io, 2, b"abcdefgh").await;
        d.rebase(&io, Some(new)).await.unwrap();
        let mut want = b"abXYefgh".to_vec();
        want.resize(CS + 3, 0);
        want.push(b'Z');
        assert_eq!(read(&io, &d, 0, want.len()).await, want);
        let (_, back) = upload_and_read(&io, &mut d, 3).await;
        assert_eq!(back, want);
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
