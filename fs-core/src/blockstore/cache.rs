//! L1: decoded pieces of blocks in memory (chunks of chunked block objects, their chunk tables,
//! whole blocks of the first format), least recently used evicted first, and one fetch per piece
//! however many readers ask at once; a whole-block fetch in flight serves every piece of its
//! block. Blocks are immutable (keyed by block id), so a cached piece never goes stale.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::OnceCell;

use crate::fs::FsResult;

/// A piece of a block: (block id, part). Parts are chunk numbers, [`TABLE`], or 0 for a block of
/// the first format.
pub type Key = (u64, u32);
/// The part naming a chunked block's table.
pub const TABLE: u32 = u32::MAX;
/// The in-flight key of a whole-block fetch.
const WHOLE: u32 = u32::MAX - 1;

type Fetched = FsResult<Vec<(u32, Bytes)>>;
type Fetch = Arc<OnceCell<Fetched>>;

#[derive(Default)]
struct Inner {
    pieces: HashMap<Key, (Bytes, u64)>,
    /// Last use → piece: the first entry is the one to evict.
    order: BTreeMap<u64, Key>,
    bytes: usize,
    tick: u64,
    inflight: HashMap<Key, Fetch>,
}

impl Inner {
    fn touch(&mut self, key: Key) -> Option<Bytes> {
        self.tick += 1;
        let tick = self.tick;
        let (data, t) = self.pieces.get_mut(&key)?;
        self.order.remove(t);
        *t = tick;
        self.order.insert(tick, key);
        Some(data.clone())
    }

    fn insert(&mut self, key: Key, data: Bytes, capacity: usize) {
        if self.pieces.contains_key(&key) {
            return;
        }
        self.tick += 1;
        self.bytes += data.len();
        self.pieces.insert(key, (data, self.tick));
        self.order.insert(self.tick, key);
        while self.bytes > capacity && self.pieces.len() > 1 {
            let Some((_, old)) = self.order.pop_first() else { break };
            if let Some((d, _)) = self.pieces.remove(&old) {
                self.bytes -= d.len();
            }
        }
    }
}

pub struct BlockCache {
    capacity: usize,
    inner: Mutex<Inner>,
    pub hits: AtomicU64,
    pub fetches: AtomicU64,
}

impl BlockCache {
    pub fn new(capacity: usize) -> BlockCache {
        BlockCache {
            capacity,
            inner: Mutex::new(Inner::default()),
            hits: Default::default(),
            fetches: Default::default(),
        }
    }

    /// A cached piece, if present.
    pub fn get(&self, key: Key) -> Option<Bytes> {
        let d = self.inner.lock().touch(key)?;
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(d)
    }

    /// Whether every listed piece of block `id` is cached.
    pub fn has_all(&self, id: u64, parts: impl IntoIterator<Item = u32>) -> bool {
        let g = self.inner.lock();
        parts.into_iter().all(|p| g.pieces.contains_key(&(id, p)))
    }

    /// The piece `key`, from memory or from `fetch` (run once for concurrent callers). A
    /// whole-block fetch of its block in flight is waited for first.
    pub async fn get_or_fetch(&self, key: Key, fetch: impl Future<Output = FsResult<Bytes>>) -> FsResult<Bytes> {
        let whole = {
            let mut g = self.inner.lock();
            if let Some(d) = g.touch(key) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(d);
            }
            g.inflight.get(&(key.0, WHOLE)).cloned()
        };
        if let Some(cell) = whole {
            self.wait(key.0, WHOLE, cell).await;
            if let Some(d) = self.get(key) {
                return Ok(d);
            }
        }
        let got = self.run((key.0, key.1), async { fetch.await.map(|d| vec![(key.1, d)]) }).await?;
        got.into_iter().find(|(part, _)| *part == key.1).map(|(_, d)| d).ok_or(libc::EIO)
    }

    /// Fetches pieces of block `id` with one request (run once for concurrent callers) and
    /// caches them all; readers of any piece of the block wait for it rather than fetch.
    pub async fn fetch_whole(&self, id: u64, fetch: impl Future<Output = Fetched>) -> Fetched {
        self.run((id, WHOLE), fetch).await
    }

    /// Caches pieces of block `id` that were not fetched (a block this mount just uploaded).
    pub fn insert_all(&self, id: u64, pieces: impl IntoIterator<Item = (u32, Bytes)>) {
        let mut g = self.inner.lock();
        for (part, d) in pieces {
            g.insert((id, part), d, self.capacity);
        }
    }

    /// Waits for a fetch in flight that someone else runs; runs nothing itself.
    async fn wait(&self, id: u64, part: u32, cell: Fetch) {
        let _ = cell.get_or_init(|| async { Ok(Vec::new()) }).await;
        self.done((id, part), &cell);
    }

    async fn run(&self, flight: Key, fetch: impl Future<Output = Fetched>) -> Fetched {
        let cell = self.inner.lock().inflight.entry(flight).or_default().clone();
        let r = cell
            .get_or_init(|| async {
                self.fetches.fetch_add(1, Ordering::Relaxed);
                let r = fetch.await;
                if let Ok(pieces) = &r {
                    let mut g = self.inner.lock();
                    for (part, d) in pieces {
                        g.insert((flight.0, *part), d.clone(), self.capacity);
                    }
                }
                r
            })
            .await
            .clone();
        self.done(flight, &cell);
        r
    }

    /// Forgets a finished fetch (unless a newer one for the same key took its place).
    fn done(&self, flight: Key, cell: &Fetch) {
        let mut g = self.inner.lock();
        if g.inflight.get(&flight).is_some_and(|c| Arc::ptr_eq(c, cell)) {
            g.inflight.remove(&flight);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_fetch_for_concurrent_readers_and_lru_eviction() {
        let cache = Arc::new(BlockCache::new(100));
        let calls = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (cache, calls) = (cache.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_fetch((1, 0), async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        Ok(Bytes::from(vec![1u8; 60]))
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().len(), 60);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "eight readers, one fetch");
        cache.get_or_fetch((2, 0), async { Ok(Bytes::from(vec![2u8; 60])) }).await.unwrap();
        // 120 bytes > 100: block 1 (least recently used) went.
        let refetched = cache.get_or_fetch((1, 0), async { Ok(Bytes::from(vec![9u8; 1])) }).await.unwrap();
        assert_eq!(refetched[0], 9);
        // A failed fetch is not cached.
        assert_eq!(cache.get_or_fetch((3, 0), async { Err(libc::EIO) }).await, Err(libc::EIO));
        assert!(cache.get_or_fetch((3, 0), async { Ok(Bytes::from(vec![3u8])) }).await.is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_whole_block_fetch_in_flight_serves_readers_of_its_pieces() {
        let cache = Arc::new(BlockCache::new(1 << 20));
        let whole = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .fetch_whole(7, async {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        Ok(vec![
                            (TABLE, Bytes::from_static(b"t")),
                            (0, Bytes::from_static(b"a")),
                            (1, Bytes::from_static(b"b")),
                        ])
                    })
                    .await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        let piece = cache.get_or_fetch((7, 1), async { Ok(Bytes::from_static(b"fetched alone")) }).await.unwrap();
        assert_eq!(&piece[..], b"b", "the reader waited for the whole-block fetch");
        assert_eq!(whole.await.unwrap().unwrap().len(), 3);
        assert_eq!(cache.get((7, TABLE)).as_deref(), Some(&b"t"[..]));
        assert_eq!(cache.fetches.load(Ordering::Relaxed), 1);
        // Least recently used goes first.
        let small = BlockCache::new(2);
        let mut g = small.inner.lock();
        g.insert((1, 0), Bytes::from_static(b"x"), 2);
        g.insert((1, 1), Bytes::from_static(b"y"), 2);
        g.touch((1, 0));
        g.insert((1, 2), Bytes::from_static(b"z"), 2);
        assert!(g.pieces.contains_key(&(1, 0)) && !g.pieces.contains_key(&(1, 1)));
    }
}
