//! Reads at the store's door (MinIO behind the counting proxy): a large block is fetched with
//! ranged GETs in parallel, and readers that arrive together share one fetch.

use std::sync::{Arc, Barrier};

use e2e::stores::Backend;
use e2e::stratusfs::Mount;
use fs_core::admin::Compression;

use crate::store_failures::{Proxied, pattern, proxied};

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_readers_of_a_cold_block_cost_the_store_what_one_reader_does() {
    e2e::init();
    let Proxied { meta, proxy, token, _store } = proxied(Backend::Minio, |r| {
        r.block_size = Some(4 * MIB as u32);
        r.compression = Compression::None;
    })
    .await;
    let (one, eight) = (pattern(5, 4 * MIB), pattern(6, 4 * MIB));
    {
        let m = Mount::start(&meta, "v", &token, &[]).await.unwrap();
        std::fs::write(m.path.join("one"), &one).unwrap();
        std::fs::write(m.path.join("eight"), &eight).unwrap();
    }
    // A fresh mount: nothing of either file in its memory or the kernel's page cache.
    let m = Mount::start(&meta, "v", &token, &[]).await.unwrap();
    proxy.clear();
    let p = m.path.join("one");
    let got = tokio::task::spawn_blocking(move || std::fs::read(p).unwrap()).await.unwrap();
    assert!(got == one, "one reader read different bytes");
    let gets: Vec<_> = proxy.requests().into_iter().filter(|r| r.method == "GET").collect();
    eprintln!("one reader of a cold 4 MiB block: {} GETs: {:?}", gets.len(), gets);
    // The object (4 MiB and its chunk table) in 1 MiB ranges, all at once.
    assert_eq!(gets.len(), 5, "{gets:?}");
    assert!(gets.iter().all(|r| r.range.is_some()), "a large block is fetched in ranges: {gets:?}");

    proxy.clear();
    let barrier = Arc::new(Barrier::new(8));
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let (p, b) = (m.path.join("eight"), barrier.clone());
            std::thread::spawn(move || {
                b.wait();
                std::fs::read(p).unwrap()
            })
        })
        .collect();
    let results =
        tokio::task::spawn_blocking(move || readers.into_iter().map(|t| t.join().unwrap()).collect::<Vec<_>>())
            .await
            .unwrap();
    assert!(results.iter().all(|r| *r == eight), "a reader of eight read different bytes");
    let n8 = proxy.forwarded("GET");
    eprintln!("eight readers of a cold 4 MiB block: {n8} GETs (one reader: {})", gets.len());
    assert!(n8 <= gets.len(), "eight readers made {n8} GETs, one reader {}: {:?}", gets.len(), proxy.requests());
}

/// The whole-object entries of a disk cache directory, by object id.
fn disk_entries(dir: &std::path::Path) -> Vec<(u64, std::path::PathBuf)> {
    let mut out = Vec::new();
    for vol in std::fs::read_dir(dir).unwrap().flatten() {
        for sub in std::fs::read_dir(vol.path()).into_iter().flatten().flatten() {
            for e in std::fs::read_dir(sub.path()).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Ok(id) = u64::from_str_radix(&name, 16) {
                    out.push((id, e.path()));
                }
            }
        }
    }
    out.sort();
    out
}

/// A number logged as `key=N` on the mount's "caches at unmount" line.
fn logged(log: &str, key: &str) -> u64 {
    let line = log.lines().rev().find(|l| l.contains("caches at unmount")).unwrap_or_else(|| panic!("{log}"));
    // Without the terminal colours' escape sequences (their digits are not the value).
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            let _ = chars.by_ref().find(|c| *c == 'm');
        } else {
            plain.push(c);
        }
    }
    let at = plain.find(&format!("{key}=")).unwrap_or_else(|| panic!("{key} not in {plain}"));
    let digits: String = plain[at + key.len() + 1..].chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_cache_serves_a_restarted_mount_with_the_store_down_and_never_a_damaged_byte() {
    e2e::init();
    let Proxied { meta, proxy, token, _store } = proxied(Backend::Minio, |r| r.block_size = Some(MIB as u32)).await;
    let l2 = tempfile::tempdir().unwrap();
    let cache_opt = format!("disk_cache_dir={}", l2.path().display());
    let opts = [cache_opt.as_str(), "store_wait=1"];
    let (big, small) = (pattern(7, 3 * MIB + 100), pattern(8, 200 * 1024));
    {
        let m = Mount::start(&meta, "v", &token, &opts).await.unwrap();
        std::fs::write(m.path.join("big"), &big).unwrap();
        std::fs::write(m.path.join("small"), &small).unwrap();
    }
    // A restarted mount reads both from the store, keeping them in L2.
    let mut m = Mount::start(&meta, "v", &token, &opts).await.unwrap();
    assert!(std::fs::read(m.path.join("big")).unwrap() == big);
    assert!(std::fs::read(m.path.join("small")).unwrap() == small);
    m.stop();
    let entries = disk_entries(l2.path());
    assert!(entries.len() >= 5, "four blocks of big and one of small in L2: {entries:?}");

    // The store answers nothing now: the next mount reads both from L2 alone.
    proxy.set(e2e::proxy::Fault::Unavailable);
    proxy.clear();
    let mut m = Mount::start(&meta, "v", &token, &opts).await.unwrap();
    let got = std::fs::read(m.path.join("big")).unwrap_or_else(|e| panic!("big with the store down: {e}"));
    assert!(got == big, "big read back differently from L2");
    assert!(std::fs::read(m.path.join("small")).unwrap() == small, "small read back differently from L2");
    m.stop();
    assert_eq!(proxy.requests().len(), 0, "{:?}", proxy.requests());
    let log = m.log_tail(400);
    let hits = logged(&log, "l2_hits");
    eprintln!("restart with the store down: {hits} L2 hits, no request to the store");
    assert!(hits >= 5, "{log}");

    // A flipped byte in small's entry (its object has the highest id: written last): the right
    // bytes, through one GET of the store, and the entry is rewritten.
    proxy.set(e2e::proxy::Fault::None);
    let (_, entry) = disk_entries(l2.path()).pop().unwrap();
    let mut raw = std::fs::read(&entry).unwrap();
    let at = raw.len() / 2;
    raw[at] ^= 0x20;
    std::fs::write(&entry, raw).unwrap();
    proxy.clear();
    let mut m = Mount::start(&meta, "v", &token, &opts).await.unwrap();
    let got = std::fs::read(m.path.join("small")).unwrap();
    assert!(got == small, "a damaged L2 entry was served");
    m.stop();
    let gets = proxy.forwarded("GET");
    let log = m.log_tail(400);
    eprintln!("flipped byte in L2: {gets} GET, damaged entries {}", logged(&log, "l2_damaged"));
    assert_eq!(gets, 1, "{:?}", proxy.requests());
    assert_eq!(logged(&log, "l2_damaged"), 1, "{log}");
    assert!(log.contains("disk cache entry is damaged"), "{log}");
}
