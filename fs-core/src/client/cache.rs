//! L1: decoded blocks in memory, least recently used evicted first, and one fetch per block
//! however many readers ask at once. Blocks are immutable (keyed by block id), so a cached block
//! never goes stale.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::OnceCell;

use super::FsResult;

type Fetch = Arc<OnceCell<FsResult<Bytes>>>;

#[derive(Default)]
struct Inner {
    blocks: HashMap<u64, (Bytes, u64)>,
    bytes: usize,
    tick: u64,
    inflight: HashMap<u64, Fetch>,
}

pub struct BlockCache {
    capacity: usize,
    inner: Mutex<Inner>,
    pub hits: std::sync::atomic::AtomicU64,
    pub fetches: std::sync::atomic::AtomicU64,
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

    /// The block `id`, from memory or from `fetch` (run once for concurrent callers).
    pub async fn get_or_fetch(&self, id: u64, fetch: impl Future<Output = FsResult<Bytes>>) -> FsResult<Bytes> {
        let cell = {
            let mut g = self.inner.lock();
            g.tick += 1;
            let tick = g.tick;
            if let Some((data, t)) = g.blocks.get_mut(&id) {
                *t = tick;
                self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(data.clone());
            }
            g.inflight.entry(id).or_default().clone()
        };
        let r = cell
            .get_or_init(|| async {
                self.fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                fetch.await
            })
            .await
            .clone();
        let mut g = self.inner.lock();
        g.inflight.remove(&id);
        if let Ok(data) = &r
            && !g.blocks.contains_key(&id)
        {
            g.tick += 1;
            let tick = g.tick;
            g.bytes += data.len();
            g.blocks.insert(id, (data.clone(), tick));
            while g.bytes > self.capacity && g.blocks.len() > 1 {
                let oldest = g.blocks.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k).expect("not empty");
                if let Some((d, _)) = g.blocks.remove(&oldest) {
                    g.bytes -= d.len();
                }
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_fetch_for_concurrent_readers_and_lru_eviction() {
        let cache = Arc::new(BlockCache::new(100));
        let calls = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (cache, calls) = (cache.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_fetch(1, async {
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
        cache.get_or_fetch(2, async { Ok(Bytes::from(vec![2u8; 60])) }).await.unwrap();
        // 120 bytes > 100: block 1 (least recently used) went.
        let refetched = cache.get_or_fetch(1, async { Ok(Bytes::from(vec![9u8; 1])) }).await.unwrap();
        assert_eq!(refetched[0], 9);
        // A failed fetch is not cached.
        assert_eq!(cache.get_or_fetch(3, async { Err(libc::EIO) }).await, Err(libc::EIO));
        assert!(cache.get_or_fetch(3, async { Ok(Bytes::from(vec![3u8])) }).await.is_ok());
    }
}
