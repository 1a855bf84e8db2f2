//! Reading and writing block objects: ranged reads of chunked objects through the L1 cache
//! (the chunk table first, then only the chunks a read touches, each checked), whole-object
//! fetches for read-ahead and rewrites, and uploads. A piece that fails its check is EIO and a
//! log line, never wrong bytes.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio::sync::Semaphore;

use crate::blockstore::cache::{BlockCache, TABLE};
use crate::blockstore::disk::DiskCache;
use crate::blockstore::{LocalFiles, codec, layout};
use crate::crypto::TABLE_INDEX;
use crate::fs::FsResult;
use crate::wire::pb;

/// A block names at most this many other objects (chunks a rewrite kept where an older object
/// stores them): a whole-block read costs at most this many more requests.
pub const MAX_SHARED: usize = 8;

/// A read that needs this many chunks of one block fetches the whole block.
const WHOLE_FETCH_CHUNKS: u32 = 8;

/// A whole object larger than this is fetched as ranged GETs of this size, in parallel: one
/// connection's throughput, not the store's, bounds a single GET of a large object.
pub const GET_PART: u64 = 1 << 20;

/// `n` zero bytes as reply pieces, without allocating.
pub fn zeros(out: &mut Vec<Bytes>, mut n: usize) {
    while n > 0 {
        let k = n.min(codec::ZEROS.len());
        out.push(Bytes::from_static(&codec::ZEROS[..k]));
        n -= k;
    }
}

/// The block store of one volume, with the mount's L1 cache and its I/O limit.
#[derive(Clone)]
pub struct BlockIo {
    /// The store's client: replaced when the volume's spec changes on the server (rotated
    /// credentials); requests under way finish on the old one.
    pub store: Arc<parking_lot::RwLock<Arc<dyn ObjectStore>>>,
    pub cache: Arc<BlockCache>,
    pub io: Arc<Semaphore>,
    /// Whole-block fetches a random reader's misses may have under way ([`BlockIo::prefetch`]).
    pub prefetch: Arc<Semaphore>,
    pub volume_uuid: Arc<str>,
    /// A local-folder store's files, read and written directly (see [`LocalFiles`]).
    pub local: Option<LocalFiles>,
    /// This mount's permit for a reader thread to write a local object itself.
    pub durable: Arc<crate::blocking::DurableSlot>,
    /// Stored bytes on local disk (L2), for a store across the network.
    pub l2: Option<Arc<DiskCache>>,
    /// The keys of an encrypted volume: chunks and tables are sealed ([`codec::SealAt`]).
    pub keys: Option<Arc<crate::crypto::VolumeKeys>>,
}

impl BlockIo {
    /// The store's client now.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.read().clone()
    }

    /// Where sealed bytes of object `object` at `index` belong, on an encrypted volume.
    fn seal_at(&self, object: u64, index: u32) -> Option<codec::SealAt<'_>> {
        self.keys.as_deref().map(|keys| codec::SealAt { keys, object, index })
    }

    /// Bytes the chunk table of block `b` takes at the start of its object.
    fn stored_table_len(&self, b: &pb::BlockRef) -> usize {
        codec::stored_table_len(b.chunks, self.keys.is_some())
    }

    /// Bytes `[from, from + len)` of block `b` as pieces: stored bytes up to the block map's
    /// valid length, zeros after it.
    pub async fn range(&self, b: &pb::BlockRef, from: usize, len: usize) -> FsResult<Vec<Bytes>> {
        let mut out = Vec::new();
        let end = from + len;
        let data_end = end.min(b.len as usize);
        if from < data_end {
            if b.chunk_size == 0 {
                let d = self.single(b).await?;
                out.push(d.slice(from..data_end));
            } else {
                let cs = b.chunk_size as usize;
                let (first, last) = ((from / cs) as u32, ((data_end - 1) / cs) as u32);
                if last >= b.chunks {
                    tracing::error!(
                        block = b.id,
                        len = b.len,
                        chunks = b.chunks,
                        "the block map names more bytes than the block's chunks hold; answering EIO"
                    );
                    return Err(libc::EIO);
                }
                if last - first + 1 >= WHOLE_FETCH_CHUNKS
                    && !self.cache.has_all(b.id, std::iter::once(TABLE).chain(first..=last))
                {
                    // A large read (a sequential reader ahead of its read-ahead): one request for
                    // the block rather than one per chunk. A small read of a block L2 holds whole
                    // reads only its chunks from the file.
                    self.whole(b).await?;
                }
                let table = self.table(b).await?;
                let table = &table;
                let chunks = futures::future::try_join_all((first..=last).map(|c| self.chunk(b, table, c))).await?;
                for (c, d) in (first..=last).zip(chunks) {
                    let base = c as usize * cs;
                    out.push(d.slice(from.max(base) - base..data_end.min(base + cs) - base));
                }
            }
        }
        zeros(&mut out, end - from.max(data_end));
        Ok(out)
    }

    /// Whether all of block `b` is in L1 (reading it costs no request).
    fn is_cached(&self, b: &pb::BlockRef) -> bool {
        match b.chunk_size {
            0 => self.cache.has_all(b.id, [0]),
            _ => self.cache.has_all(b.id, std::iter::once(TABLE).chain(0..b.chunks)),
        }
    }

    /// Starts fetching block `b` whole in the background, unless L1 holds it, it is on local
    /// disk already, or as many prefetches as allowed are under way (then it is left out, never
    /// queued: a random reader over a large file must not build a backlog).
    pub fn prefetch(&self, b: &pb::BlockRef) {
        if b.chunk_size == 0
            || self.local.is_some()
            || self.is_cached(b)
            || self.l2.as_ref().is_some_and(|l2| l2.has_whole(b.id))
        {
            return;
        }
        let Ok(permit) = self.prefetch.clone().try_acquire_owned() else { return };
        let (this, b) = (self.clone(), b.clone());
        tokio::spawn(async move {
            let _ = this.whole(&b).await;
            drop(permit);
        });
    }

    /// Fetches and caches all of block `b` with one request (read-ahead; a rewrite's base).
    pub async fn whole(&self, b: &pb::BlockRef) -> FsResult<()> {
        if b.chunk_size == 0 {
            return self.single(b).await.map(|_| ());
        }
        if self.is_cached(b) {
            return Ok(());
        }
        let this = self.clone();
        let owned = b.clone();
        self.cache
            .fetch_whole(b.id, async move {
                let b = owned;
                let obj = this.get_whole(b.id, b.stored_len as u64).await?;
                // Checking a whole block is CPU work: kept off the runtime's workers.
                crate::blocking::run(move || {
                    let stored_table = obj.slice(..this.stored_table_len(&b).min(obj.len()));
                    let table = codec::open_table(stored_table, b.chunks, &b.checksum, this.seal_at(b.id, TABLE_INDEX))
                        .map_err(|e| failed(&b, "its chunk table", e))?;
                    // A copy: a slice of the object would keep all of it in memory while L1
                    // counts only the table.
                    let mut pieces = vec![(TABLE, Bytes::copy_from_slice(&table))];
                    for c in 0..b.chunks {
                        let ch = codec::chunk(&table, c);
                        if ch.object.is_some() {
                            continue;
                        }
                        let stored = obj.get(ch.range.start as usize..ch.range.end as usize).ok_or(libc::EIO)?;
                        let d = codec::decode_chunk(
                            &ch,
                            obj.slice_ref(stored),
                            want(&b, c),
                            b.chunk_size as usize,
                            this.seal_at(b.id, c),
                        )
                        .map_err(|e| failed(&b, &format!("chunk {c}"), e))?;
                        pieces.push((c, d));
                    }
                    Ok(pieces)
                })
                .await
                .ok_or(libc::EIO)?
            })
            .await?;
        // Chunks the block shares with older objects: ranged reads of those.
        if !b.shared.is_empty() {
            let table = self.table(b).await?;
            let table = &table;
            let shared = (0..b.chunks).filter(|&c| codec::chunk(table, c).object.is_some());
            futures::future::try_join_all(shared.map(|c| self.chunk(b, table, c))).await?;
        }
        Ok(())
    }

    /// Uploads block object `id` of `len` bytes, encoded in chunks. `chunks` holds the bytes of
    /// every chunk that may differ from `base` (the block it replaces), each exactly its length in
    /// the block; a chunk not there is the base's, and the new table names where the base stored
    /// it, so a small rewrite uploads little. Chunks may be left out only over a base that
    /// [`shares_chunks`]. With `cache` the chunks also go into L1 (a rewritten block is likely read
    /// or rewritten again), those left out too where L1 has them under the base.
    #[allow(clippy::too_many_arguments)]
    pub async fn upload(
        &self,
        index: u64,
        id: u64,
        chunks: BTreeMap<u32, Bytes>,
        len: usize,
        kind: pb::compression::Kind,
        base: Option<&pb::BlockRef>,
        cache: bool,
    ) -> FsResult<pb::BlockRef> {
        let count = len.div_ceil(codec::CHUNK_SIZE) as u32;
        let base = match base {
            Some(b) if (chunks.len() as u32) < count => {
                debug_assert!(shares_chunks(b), "chunks left out over a base that cannot share them");
                Some((b.clone(), self.table(b).await?))
            }
            _ => None,
        };
        let _permit = self.io.acquire().await.map_err(|_| libc::EIO)?;
        let (pieces, over, keys) = (chunks.clone(), base.clone(), self.keys.clone());
        let encode = move || {
            let over = over.as_ref().map(|(b, t)| codec::Base { id: b.id, table: t });
            codec::encode_over(len, kind, over, keys.as_deref().map(|k| (k, id)), |c| pieces.get(&c).cloned())
        };
        // One chunk checksummed (and lz4-compressed) costs less than handing it to another thread.
        let small = chunks.len() <= 1 && kind != pb::compression::Kind::Zstd;
        let e = match small {
            true => encode(),
            false => crate::blocking::run(encode).await.ok_or(libc::EIO)?,
        };
        let key = layout::block_key(&self.volume_uuid, id);
        let failed = |err: &dyn std::fmt::Display| {
            tracing::error!(block = id, key = %key, error = %err, "uploading a block failed");
            libc::EIO
        };
        let e = e.map_err(|e| failed(&e))?;
        match &self.local {
            Some(local) => {
                let (local, k, parts) = (local.clone(), key.clone(), e.parts.clone());
                crate::blocking::run_durable(&self.durable, move || local.write(&k, &parts))
                    .await
                    .ok_or(libc::EIO)?
                    .map_err(|e| failed(&e))?
            }
            None => {
                let payload: PutPayload = e.parts.iter().cloned().collect();
                self.store().put(&key, payload).await.map_err(|e| failed(&e))?;
            }
        }
        if cache {
            // The chunks decode to the bytes they were made of; the base's decode as before.
            let kept: Vec<(u32, Bytes)> = match &base {
                Some((b, _)) => (0..count)
                    .filter(|c| !chunks.contains_key(c))
                    .filter_map(|c| Some((c, self.cache.get((b.id, c))?)))
                    .collect(),
                None => Vec::new(),
            };
            self.cache.insert_all(id, std::iter::once((TABLE, e.table.clone())).chain(chunks).chain(kept));
        }
        Ok(pb::BlockRef {
            index,
            id,
            len: len as u32,
            version: 0,
            stored_len: e.stored_len,
            checksum: e.checksum,
            compression: e.kind as i32,
            chunk_size: e.chunk_size,
            chunks: e.chunks,
            shared: e.shared,
        })
    }

    /// For each chunk of a chunked block, the object that stores it (`None`: a chunk of zeros,
    /// stored nowhere).
    pub async fn chunk_objects(&self, b: &pb::BlockRef) -> FsResult<Vec<Option<u64>>> {
        let table = self.table(b).await?;
        Ok((0..b.chunks)
            .map(|c| codec::chunk(&table, c))
            .map(|ch| (!ch.is_zero()).then(|| ch.object.unwrap_or(b.id)))
            .collect())
    }

    /// A chunked block's table, checked against the block map.
    async fn table(&self, b: &pb::BlockRef) -> FsResult<Bytes> {
        self.cache
            .get_or_fetch((b.id, TABLE), async {
                let check = |t: Bytes| codec::open_table(t, b.chunks, &b.checksum, self.seal_at(b.id, TABLE_INDEX));
                self.get_checked(b, b.id, 0..self.stored_table_len(b) as u64, "its chunk table", check).await
            })
            .await
    }

    /// Chunk `c` of a chunked block, decoded and checked.
    async fn chunk(&self, b: &pb::BlockRef, table: &[u8], c: u32) -> FsResult<Bytes> {
        self.cache
            .get_or_fetch((b.id, c), async {
                let ch = codec::chunk(table, c);
                let holder = ch.object.unwrap_or(b.id);
                let decode = |stored| {
                    codec::decode_chunk(&ch, stored, want(b, c), b.chunk_size as usize, self.seal_at(holder, c))
                };
                if ch.range.is_empty() {
                    return decode(Bytes::new()).map_err(|e| failed(b, &format!("chunk {c}"), e));
                }
                self.get_checked(b, holder, ch.range.clone(), &format!("chunk {c}"), decode).await
            })
            .await
    }

    /// Bytes `range` of object `id` (`what` of block `b`) as `check` makes them: from L2 if it
    /// holds them and they pass (an entry that fails is discarded), else from the store, kept in
    /// L2 once they passed; store bytes that fail are EIO and a log line.
    async fn get_checked<T>(
        &self,
        b: &pb::BlockRef,
        id: u64,
        range: Range<u64>,
        what: &str,
        check: impl Fn(Bytes) -> Result<T, codec::CodecError>,
    ) -> FsResult<T> {
        if let Some(d) = self.read_disk(id, Some(range.clone())).await {
            match check(d) {
                Ok(v) => return Ok(v),
                Err(_) => self.l2.as_ref().expect("bytes came from L2").discard(id, Some(range.clone())),
            }
        }
        let got = self.fetch(id, Some(range.clone())).await?;
        let v = check(got.clone()).map_err(|e| failed(b, what, e))?;
        self.keep_on_disk(id, Some(range), &got);
        Ok(v)
    }

    /// A block of the first format: one piece, fetched and checked whole.
    async fn single(&self, b: &pb::BlockRef) -> FsResult<Bytes> {
        if self.keys.is_some() {
            // Encrypted volumes were always chunked: an unsealed block is not theirs.
            tracing::error!(block = b.id, "a block of the first format on an encrypted volume; answering EIO");
            return Err(libc::EIO);
        }
        self.cache
            .get_or_fetch((b.id, 0), async {
                let stored = self.get_whole(b.id, b.stored_len as u64).await?;
                let b = b.clone();
                crate::blocking::run(move || {
                    codec::decode(stored, b.compression(), b.len as usize, &b.checksum)
                        .map_err(|e| failed(&b, "the object", e))
                })
                .await
                .ok_or(libc::EIO)?
            })
            .await
    }

    /// All `size` bytes of block object `id`: in parallel ranged GETs of at most [`GET_PART`]
    /// (a local folder reads it at once).
    async fn get_whole(&self, id: u64, size: u64) -> FsResult<Bytes> {
        if self.local.is_some() || size <= GET_PART {
            return self.get(id, None).await;
        }
        if let Some(d) = self.read_disk(id, None).await {
            return Ok(d);
        }
        let parts = get_parts(size).into_iter().map(|r| self.fetch(id, Some(r)));
        let parts = futures::future::try_join_all(parts).await?;
        let mut out = bytes::BytesMut::with_capacity(size as usize);
        for p in parts {
            out.extend_from_slice(&p);
        }
        let out = out.freeze();
        self.keep_on_disk(id, None, &out);
        Ok(out)
    }

    /// The block object `id`, or a byte range of it: from L2 if it holds them, else from the
    /// store (and then kept in L2).
    async fn get(&self, id: u64, range: Option<Range<u64>>) -> FsResult<Bytes> {
        if let Some(d) = self.read_disk(id, range.clone()).await {
            return Ok(d);
        }
        let got = self.fetch(id, range.clone()).await?;
        self.keep_on_disk(id, range, &got);
        Ok(got)
    }

    /// Bytes of object `id` from L2, checked (`None`: not there, or damaged and deleted).
    async fn read_disk(&self, id: u64, range: Option<Range<u64>>) -> Option<Bytes> {
        let l2 = self.l2.clone()?;
        crate::blocking::run(move || l2.read(id, range)).await.flatten()
    }

    /// Keeps bytes of object `id` in L2, in the background.
    fn keep_on_disk(&self, id: u64, range: Option<Range<u64>>, data: &Bytes) {
        if let Some(l2) = self.l2.clone() {
            let data = data.clone();
            tokio::task::spawn_blocking(move || l2.insert(id, range, &data));
        }
    }

    /// The block object `id`, or a byte range of it, from the store.
    async fn fetch(&self, id: u64, range: Option<Range<u64>>) -> FsResult<Bytes> {
        let _permit = self.io.acquire().await.map_err(|_| libc::EIO)?;
        let key = layout::block_key(&self.volume_uuid, id);
        let failed = |e: &dyn std::fmt::Display| {
            tracing::error!(block = id, key = %key, error = %e, "reading a block object failed");
            libc::EIO
        };
        if let Some(local) = &self.local {
            let (local, k) = (local.clone(), key.clone());
            let got = crate::blocking::run(move || local.read(&k, range)).await.ok_or(libc::EIO)?;
            return got.map_err(|e| failed(&e));
        }
        let got = match range {
            Some(r) => self.store().get_range(&key, r).await,
            None => match self.store().get(&key).await {
                Ok(got) => got.bytes().await,
                Err(e) => Err(e),
            },
        };
        got.map_err(|e| failed(&e))
    }
}

/// The ranges a whole object of `size` bytes is fetched as: equal parts of at most [`GET_PART`]
/// (no small last one: each request costs the same).
pub fn get_parts(size: u64) -> Vec<Range<u64>> {
    if size == 0 {
        return Vec::new();
    }
    let part = size.div_ceil(size.div_ceil(GET_PART));
    (0..size).step_by(part as usize).map(|s| s..(s + part).min(size)).collect()
}

/// Whether a rewrite over `base` can keep the base's stored chunks where they are (it is chunked
/// in this format); a block of the first format is stored whole by its rewrite.
pub fn shares_chunks(base: &pb::BlockRef) -> bool {
    base.chunk_size as usize == codec::CHUNK_SIZE
}

/// Bytes chunk `c` of `b` must hold: up to the block map's valid length.
fn want(b: &pb::BlockRef, c: u32) -> usize {
    (b.len as usize).saturating_sub(c as usize * b.chunk_size as usize).min(b.chunk_size as usize)
}

fn failed(b: &pb::BlockRef, what: &str, e: codec::CodecError) -> i32 {
    tracing::error!(block = b.id, error = %e, "{what} of a block failed its check; answering EIO");
    libc::EIO
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn io() -> BlockIo {
        BlockIo {
            store: Arc::new(parking_lot::RwLock::new(Arc::new(InMemory::new()))),
            cache: Arc::new(BlockCache::new(1 << 20)),
            io: Arc::new(Semaphore::new(4)),
            prefetch: Arc::new(Semaphore::new(1)),
            volume_uuid: "v".into(),
            local: None,
            durable: Default::default(),
            l2: None,
            keys: None,
        }
    }

    fn concat(p: Vec<Bytes>) -> Vec<u8> {
        p.concat()
    }

    #[tokio::test]
    async fn ranged_reads_fetch_only_the_chunks_they_touch() {
        let bio = io();
        let len = 5 * codec::CHUNK_SIZE + 123;
        let data: Arc<Vec<u8>> = Arc::new((0..len as u32).map(|i| (i % 253) as u8).collect());
        for (id, kind) in [(1, pb::compression::Kind::None), (2, pb::compression::Kind::Lz4)] {
            let b = bio.upload(0, id, codec::chunks(&data, len), len, kind, None, false).await.unwrap();
            assert_eq!((b.chunks, b.chunk_size as usize), (6, codec::CHUNK_SIZE));
            let fetches = bio.cache.fetches.load(std::sync::atomic::Ordering::Relaxed);
            // Inside one chunk: the table and that chunk.
            let at = 3 * codec::CHUNK_SIZE + 10;
            assert_eq!(concat(bio.range(&b, at, 4096).await.unwrap()), data[at..at + 4096]);
            assert_eq!(bio.cache.fetches.load(std::sync::atomic::Ordering::Relaxed), fetches + 2);
            // Across chunks and past the end of the data: zeros after the valid length.
            let at = 4 * codec::CHUNK_SIZE;
            let got = concat(bio.range(&b, at, codec::CHUNK_SIZE + 1000).await.unwrap());
            assert_eq!(&got[..codec::CHUNK_SIZE + 123], &data[at..]);
            assert!(got[codec::CHUNK_SIZE + 123..].iter().all(|&x| x == 0));
            assert_eq!(got.len(), codec::CHUNK_SIZE + 1000);
            // A lowered valid length (truncate) reads zeros past it.
            let short = pb::BlockRef { len: 100, ..b.clone() };
            assert_eq!(concat(bio.range(&short, 90, 20).await.unwrap()), [&data[90..100], &[0u8; 10][..]].concat());
        }
    }

    #[tokio::test]
    async fn a_large_read_fetches_its_block_in_one_request() {
        let bio = io();
        let len = 10 * codec::CHUNK_SIZE;
        let data: Arc<Vec<u8>> = Arc::new((0..len as u32).map(|i| (i % 247) as u8).collect());
        let b =
            bio.upload(0, 1, codec::chunks(&data, len), len, pb::compression::Kind::None, None, false).await.unwrap();
        let at = codec::CHUNK_SIZE / 2;
        let want = WHOLE_FETCH_CHUNKS as usize * codec::CHUNK_SIZE - codec::CHUNK_SIZE;
        assert_eq!(concat(bio.range(&b, at, want).await.unwrap()), data[at..at + want]);
        assert_eq!(bio.cache.fetches.load(std::sync::atomic::Ordering::Relaxed), 1, "one whole-object request");
    }

    #[tokio::test]
    async fn a_random_readers_miss_brings_its_block_whole_once_in_the_background() {
        let bio = io();
        let fetches = || bio.cache.fetches.load(std::sync::atomic::Ordering::Relaxed);
        let len = 6 * codec::CHUNK_SIZE;
        let data: Arc<Vec<u8>> = Arc::new((0..len as u32).map(|i| (i % 241) as u8).collect());
        let b =
            bio.upload(0, 1, codec::chunks(&data, len), len, pb::compression::Kind::None, None, false).await.unwrap();
        let at = 3 * codec::CHUNK_SIZE + 7;
        assert_eq!(concat(bio.range(&b, at, 4096).await.unwrap()), data[at..at + 4096]);
        assert_eq!(fetches(), 2, "the table and one chunk");
        // While the one prefetch allowed is taken, a miss starts none: it is left out, not queued.
        let held = bio.prefetch.clone().try_acquire_owned().unwrap();
        bio.prefetch(&b);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(fetches(), 2, "no prefetch past the limit");
        drop(held);
        bio.prefetch(&b);
        for _ in 0..200 {
            if bio.is_cached(&b) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(bio.is_cached(&b), "the prefetch brought the block whole");
        assert_eq!(fetches(), 3, "one request for the whole block");
        bio.prefetch(&b);
        for c in [0, 1, 5] {
            let at = c * codec::CHUNK_SIZE + 100;
            assert_eq!(concat(bio.range(&b, at, 4096).await.unwrap()), data[at..at + 4096]);
        }
        assert_eq!(fetches(), 3, "reads elsewhere in the block, and a prefetch of a cached block, cost nothing");
    }

    #[tokio::test]
    async fn a_changed_chunk_or_table_is_eio_and_single_piece_blocks_still_read() {
        let bio = io();
        let len = 3 * codec::CHUNK_SIZE;
        let data: Arc<Vec<u8>> = Arc::new((0..len as u32).map(|i| (i % 251) as u8).collect());
        let b =
            bio.upload(0, 1, codec::chunks(&data, len), len, pb::compression::Kind::None, None, false).await.unwrap();
        let key = layout::block_key("v", 1);
        let mut obj = bio.store().get(&key).await.unwrap().bytes().await.unwrap().to_vec();
        obj[codec::table_len(3) + 2 * codec::CHUNK_SIZE + 5] ^= 1;
        bio.store().put(&key, obj.clone().into()).await.unwrap();
        assert_eq!(concat(bio.range(&b, 0, 100).await.unwrap()), data[..100], "chunk 0 is intact");
        assert_eq!(bio.range(&b, 2 * codec::CHUNK_SIZE, 100).await.unwrap_err(), libc::EIO);
        assert_eq!(bio.whole(&b).await.unwrap_err(), libc::EIO, "a whole fetch checks every chunk");
        // The table changed: nothing of the block is trusted.
        obj[3] ^= 1;
        bio.store().put(&layout::block_key("v", 2), obj.into()).await.unwrap();
        let b2 = pb::BlockRef { id: 2, ..b.clone() };
        assert_eq!(bio.range(&b2, 0, 100).await.unwrap_err(), libc::EIO);
        // A block of the first format (one piece, chunk_size 0) is read whole and checked.
        let stored = lz4_flex::compress_prepend_size(&data);
        let old = pb::BlockRef {
            id: 3,
            len: len as u32,
            stored_len: stored.len() as u32,
            checksum: codec::checksum(&stored),
            compression: pb::compression::Kind::Lz4 as i32,
            ..Default::default()
        };
        bio.store().put(&layout::block_key("v", 3), stored.into()).await.unwrap();
        assert_eq!(concat(bio.range(&old, 1000, 70_000).await.unwrap()), data[1000..71_000]);
    }

    #[tokio::test]
    async fn a_small_read_of_a_block_l2_holds_whole_reads_its_chunk_and_a_bad_one_comes_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let l2 = Arc::new(DiskCache::open(dir.path(), "v", 64 << 20).unwrap());
        let bio = BlockIo { l2: Some(l2.clone()), ..io() };
        let len = 6 * codec::CHUNK_SIZE;
        let data: Arc<Vec<u8>> = Arc::new((0..len as u32).map(|i| (i % 239) as u8).collect());
        let b =
            bio.upload(0, 1, codec::chunks(&data, len), len, pb::compression::Kind::None, None, false).await.unwrap();
        // The object as a sequential reader leaves it in L2: whole.
        let obj = bio.store().get(&layout::block_key("v", 1)).await.unwrap().bytes().await.unwrap();
        l2.insert(1, None, &obj);
        let fresh = || BlockIo { cache: Arc::new(BlockCache::new(1 << 20)), ..bio.clone() };
        let at = 4 * codec::CHUNK_SIZE + 9;
        assert_eq!(concat(fresh().range(&b, at, 4096).await.unwrap()), data[at..at + 4096]);
        let hits = l2.stats.hits.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(hits, 2, "the table and one chunk, read from the file");
        // A flipped byte in that chunk's part of the file: the right bytes, from the store; the
        // entry is deleted and counted.
        let file = walk(dir.path()).into_iter().find(|p| p.file_name().unwrap().len() == 16).unwrap();
        let mut raw = std::fs::read(&file).unwrap();
        let n = raw.len();
        raw[n - 2 * codec::CHUNK_SIZE + 100] ^= 0x40;
        std::fs::write(&file, raw).unwrap();
        assert_eq!(concat(fresh().range(&b, at, 4096).await.unwrap()), data[at..at + 4096]);
        assert_eq!(l2.stats.damaged.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(!file.exists(), "the damaged entry is gone");
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            match e.file_type().unwrap().is_dir() {
                true => out.extend(walk(&e.path())),
                false => out.push(e.path()),
            }
        }
        out
    }

    #[tokio::test]
    async fn a_small_rewrite_stores_only_its_chunks_and_reads_whole() {
        let bio = io();
        let cs = codec::CHUNK_SIZE;
        let len = 6 * cs;
        let kind = pb::compression::Kind::Lz4;
        let mut data: Vec<u8> = (0..len as u32).map(|i| (i % 249) as u8).collect();
        let b1 = bio.upload(0, 1, codec::chunks(&Arc::new(data.clone()), len), len, kind, None, false).await.unwrap();
        // Only chunk `c` of `data` changed.
        let only = |data: &[u8], c: u32| {
            let span = c as usize * cs..(c as usize + 1) * cs;
            BTreeMap::from([(c, Bytes::copy_from_slice(&data[span]))])
        };
        // Rewrite 5 bytes in chunk 2: the new object holds the table and that chunk only.
        data[2 * cs + 5..2 * cs + 10].copy_from_slice(b"HELLO");
        let b2 = bio.upload(0, 2, only(&data, 2), len, kind, Some(&b1), false).await.unwrap();
        assert_eq!(b2.shared, vec![1]);
        assert!(b2.stored_len < b1.stored_len / 3, "{} vs {}", b2.stored_len, b1.stored_len);
        // Again over that one, in chunk 4: chunks now come from three objects.
        data[4 * cs..4 * cs + 3].copy_from_slice(b"abc");
        let b3 = bio.upload(0, 3, only(&data, 4), len, kind, Some(&b2), false).await.unwrap();
        assert_eq!(b3.shared, vec![1, 2]);
        let fresh = BlockIo { cache: Arc::new(BlockCache::new(1 << 20)), ..bio.clone() };
        assert_eq!(concat(fresh.range(&b3, 0, len).await.unwrap()), data, "ranged reads across objects");
        let fresh = BlockIo { cache: Arc::new(BlockCache::new(16 << 20)), ..bio.clone() };
        fresh.whole(&b3).await.unwrap();
        let fetches = fresh.cache.fetches.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(concat(fresh.range(&b3, 0, len).await.unwrap()), data, "a whole fetch gathers every object");
        assert_eq!(fresh.cache.fetches.load(std::sync::atomic::Ordering::Relaxed), fetches, "all from L1");
        // With `cache`, the chunks kept from the base go into L1 under the new block too.
        let warm = BlockIo { cache: Arc::new(BlockCache::new(16 << 20)), ..bio.clone() };
        warm.whole(&b3).await.unwrap();
        data[cs] = 9;
        let b4 = warm.upload(0, 4, only(&data, 1), len, kind, Some(&b3), true).await.unwrap();
        let fetches = warm.cache.fetches.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(concat(warm.range(&b4, 0, len).await.unwrap()), data);
        assert_eq!(warm.cache.fetches.load(std::sync::atomic::Ordering::Relaxed), fetches, "all from L1");
    }
}
