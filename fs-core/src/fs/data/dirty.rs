//! A file's writes in this mount: the bytes of one write ([`WriteData`]) and the blocks written
//! and not committed yet ([`Dirty`]): only the 64 KiB chunks written, each completed from the
//! block it was built on, and the byte ranges written, so a write into a large block copies,
//! uploads and holds one chunk.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;

use crate::FsResult;
use crate::blockstore::codec;
use crate::blockstore::io::{self as blocks, BlockIo};
use crate::wire::pb;

/// A block upload in flight or done.
pub(super) enum Upload {
    Running(tokio::task::JoinHandle<FsResult<pb::BlockRef>>),
    Done(pb::BlockRef),
}

/// Logical bytes per chunk: a dirty block keeps, and a rewrite uploads, only the chunks written.
pub(crate) const CS: usize = codec::CHUNK_SIZE;

/// The pieces of `[from, end)` that fall in each chunk: (position, chunk, offset in the chunk,
/// length).
pub(super) fn chunk_pieces(from: usize, end: usize) -> impl Iterator<Item = (usize, u32, usize, usize)> {
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
pub(super) fn chunk_span(c: u32, len: usize) -> (usize, usize) {
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
    pub(super) fn each(&self, start: usize, len: usize, mut f: impl FnMut(&[u8])) {
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
    pub(super) fn take(&mut self, start: usize, len: usize) -> Option<Vec<u8>> {
        let WriteData::Pieces(p, _) = self else { return None };
        let slot = p.get_mut(start / CS).filter(|_| start.is_multiple_of(CS))?;
        if slot.as_ref()?.len() != len {
            return None;
        }
        slot.take()
    }
}

/// A block this mount wrote and has not committed.
pub(super) struct Dirty {
    /// Chunk number → the chunk's bytes as this mount sees them: the base's bytes (none past its
    /// valid length) with this mount's writes laid over, and zeros past the vector's end. A chunk
    /// not here is the base's, unchanged (zeros past the base's valid length), so a small write
    /// into a large block holds, and uploads, one chunk.
    pub(super) chunks: BTreeMap<u32, Arc<Vec<u8>>>,
    /// Sorted, disjoint, non-adjacent byte ranges written by this mount: laid over a new base
    /// when another mount changed the one these were built on.
    pub(super) extents: Vec<(usize, usize)>,
    /// The committed block this one is built on (`None`: the index held no block).
    pub(super) base: Option<pb::BlockRef>,
    pub(super) upload: Option<Upload>,
}

impl Dirty {
    pub(super) fn new(base: Option<pb::BlockRef>) -> Dirty {
        Dirty { chunks: BTreeMap::new(), extents: Vec::new(), base, upload: None }
    }

    pub(super) fn base_len(&self) -> usize {
        self.base.as_ref().map_or(0, |b| b.len as usize)
    }

    /// The block's logical length.
    pub(super) fn len(&self) -> usize {
        self.base_len().max(self.extents.last().map_or(0, |e| e.1))
    }

    pub(super) fn add_extent(&mut self, s: usize, e: usize) {
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
    pub(super) fn written_whole(&self, bs: usize) -> bool {
        self.extents == [(0, bs)]
    }

    /// Whether chunk `c`, not written, could stay where the base stored it: the base shares its
    /// chunks and holds all of this one (it does not reach past the base's valid bytes).
    pub(super) fn may_keep(&self, c: u32) -> bool {
        self.base.as_ref().is_some_and(|b| blocks::shares_chunks(b) && chunk_span(c, self.len()).1 <= b.len as usize)
    }

    /// The chunks not written that this block stores itself: those it cannot keep, and, when the
    /// kept ones would spread over more than [`blocks::MAX_SHARED`] objects, those of the objects
    /// holding fewest of them until half that many remain. A block rewritten at random places thus
    /// stays readable in a few requests, and re-stores a few single chunks now and then instead
    /// of its whole self.
    pub(super) async fn to_store(&self, io: &BlockIo) -> FsResult<Vec<u32>> {
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
    pub(super) async fn base_chunk(&self, io: &BlockIo, c: u32) -> FsResult<Vec<u8>> {
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
    pub(super) async fn write(
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
    pub(super) fn pieces(&self, from: usize, len: usize, out: &mut Vec<Piece>) {
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
    pub(super) async fn stored_chunks(&mut self, io: &BlockIo) -> FsResult<BTreeMap<u32, Bytes>> {
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
    pub(super) async fn rebase(&mut self, io: &BlockIo, base: Option<pb::BlockRef>) -> FsResult<()> {
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

    pub(super) fn cancel_upload(&mut self) {
        if let Some(Upload::Running(h)) = self.upload.take() {
            h.abort();
        }
    }
}

/// One piece of a read.
pub(super) enum Piece {
    Zero(usize),
    Bytes(Bytes),
    Block { block: pb::BlockRef, from: usize, len: usize },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockstore::cache::BlockCache;
    use tokio::sync::Semaphore;

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
            store: Arc::new(parking_lot::RwLock::new(Arc::new(object_store::memory::InMemory::new()))),
            cache: Arc::new(BlockCache::new(64 << 20)),
            io: Arc::new(Semaphore::new(4)),
            prefetch: Arc::new(Semaphore::new(1)),
            volume_uuid: "v".into(),
            local: None,
            durable: Default::default(),
            l2: None,
            keys: None,
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
}
