//! L2: stored bytes of block objects on local disk (mount options `disk_cache_dir=PATH`,
//! `disk_cache_mib=N`), so a restarted mount, or one whose L1 let a block go, reads it without
//! asking the object store.
//!
//! An entry is what a GET returned: a whole object, or one byte range of it (a chunk table, a
//! chunk), exactly as stored (compressed, and on an encrypted volume still sealed), so the checks
//! that run on the store's bytes run on these too. Block objects are immutable (a key is never
//! written twice), so an entry never goes stale. Each file carries a checksum of its bytes: a file
//! that fails it (a flipped bit, a torn write) is deleted and counted, and the caller fetches from
//! the store, so a damaged entry is never served. Files are written to a temporary name and
//! renamed; nothing is fsynced (a cache: a file lost in a crash is a miss, a torn one fails its
//! checksum). The least recently used entries go first when the bytes pass the limit; the order
//! survives a restart through the files' modification times.
//!
//! Layout: `DIR/VOLUME-UUID/XX/ID` for a whole object, `DIR/VOLUME-UUID/XX/ID.START-LEN` for a
//! range (`XX`: the id's last byte in hex, spreading entries over 256 directories).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use parking_lot::Mutex;

/// The first bytes of every entry file: format and version.
const MAGIC: &[u8; 8] = b"SFSL2v1\n";
/// Magic, checksum of the payload (xxh3-64), payload length.
const HEADER: usize = 8 + 8 + 8;

/// An entry's name: the object and, for a range, the range.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Name {
    id: u64,
    range: Option<(u64, u64)>,
}

impl Name {
    fn file(&self) -> String {
        match self.range {
            None => format!("{:02x}/{:016x}", self.id & 0xff, self.id),
            Some((start, len)) => format!("{:02x}/{:016x}.{start}-{len}", self.id & 0xff, self.id),
        }
    }

    fn parse(file: &str) -> Option<Name> {
        let (id, range) = match file.split_once('.') {
            Some((id, r)) => {
                let (s, l) = r.split_once('-')?;
                (id, Some((s.parse().ok()?, l.parse().ok()?)))
            }
            None => (file, None),
        };
        Some(Name { id: u64::from_str_radix(id, 16).ok()?, range })
    }
}

#[derive(Default)]
struct Index {
    /// Entry → (payload bytes on disk, last use).
    entries: HashMap<Name, (u64, u64)>,
    /// Last use → entry: the first is the one to evict.
    order: BTreeMap<u64, Name>,
    /// Objects with a whole entry (a range of them is read from it).
    whole: HashMap<u64, u64>,
    bytes: u64,
    tick: u64,
}

impl Index {
    fn add(&mut self, name: Name, size: u64) {
        self.remove(&name);
        self.tick += 1;
        if name.range.is_none() {
            self.whole.insert(name.id, size);
        }
        self.bytes += size;
        self.order.insert(self.tick, name.clone());
        self.entries.insert(name, (size, self.tick));
    }

    fn remove(&mut self, name: &Name) -> bool {
        let Some((size, tick)) = self.entries.remove(name) else { return false };
        self.order.remove(&tick);
        if name.range.is_none() {
            self.whole.remove(&name.id);
        }
        self.bytes -= size;
        true
    }

    fn touch(&mut self, name: &Name) -> bool {
        self.tick += 1;
        let tick = self.tick;
        let Some((_, t)) = self.entries.get_mut(name) else { return false };
        self.order.remove(t);
        *t = tick;
        self.order.insert(tick, name.clone());
        true
    }
}

/// Counters of one mount's L2.
#[derive(Debug, Default)]
pub struct DiskStats {
    /// Reads answered from disk.
    pub hits: AtomicU64,
    /// Reads that had to ask the store.
    pub misses: AtomicU64,
    /// Entries that failed their checksum (deleted; the store was asked instead).
    pub damaged: AtomicU64,
    /// Entries written, and evicted to stay under the limit.
    pub written: AtomicU64,
    pub evicted: AtomicU64,
}

/// A volume's L2 in one directory.
pub struct DiskCache {
    dir: PathBuf,
    capacity: u64,
    index: Mutex<Index>,
    pub stats: DiskStats,
}

/// A disk cache directory that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("disk cache directory {dir}: {source}; create it, make it writable, or leave out disk_cache_dir")]
pub struct DiskCacheError {
    dir: PathBuf,
    source: std::io::Error,
}

impl DiskCache {
    /// Opens (creating it if needed) the L2 of volume `volume_uuid` under `dir`, keeping at most
    /// `capacity` bytes; what earlier runs left there is indexed (oldest use first) and kept.
    pub fn open(dir: &Path, volume_uuid: &str, capacity: u64) -> Result<DiskCache, DiskCacheError> {
        let root = dir.join(volume_uuid);
        let err = |source| DiskCacheError { dir: root.clone(), source };
        std::fs::create_dir_all(&root).map_err(err)?;
        // A file this process cannot create is found now, not at the first read.
        let probe = root.join(format!(".probe-{}", std::process::id()));
        File::create(&probe).map_err(err)?;
        let _ = std::fs::remove_file(&probe);
        let mut found = Vec::new();
        for sub in std::fs::read_dir(&root).map_err(err)?.flatten() {
            if !sub.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            for e in std::fs::read_dir(sub.path()).into_iter().flatten().flatten() {
                let file = e.file_name().to_string_lossy().into_owned();
                let Some(name) = Name::parse(&file) else {
                    // A temporary file a crash left behind.
                    let _ = std::fs::remove_file(e.path());
                    continue;
                };
                let Ok(meta) = e.metadata() else { continue };
                let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                found.push((used, name, meta.len().saturating_sub(HEADER as u64)));
            }
        }
        found.sort_by_key(|(used, ..)| *used);
        let mut index = Index::default();
        for (_, name, size) in found {
            index.add(name, size);
        }
        let cache = DiskCache { dir: root, capacity, index: Mutex::new(index), stats: DiskStats::default() };
        cache.evict();
        let (n, bytes) = {
            let i = cache.index.lock();
            (i.entries.len(), i.bytes)
        };
        tracing::info!(dir = %cache.dir.display(), entries = n, bytes, capacity, "disk cache (L2) opened");
        Ok(cache)
    }

    /// Bytes `range` of object `id` (all of it with `None`), if an entry holds them. An entry read
    /// as it was kept is checked against its checksum (one that fails is deleted, counted, and a
    /// miss). A range of an object held whole is read alone, not the rest of the object, and is
    /// not checked here: every piece a mount reads by range has a checksum of its own (a chunk in
    /// its table, a table in the block map), and a caller whose check fails calls
    /// [`DiskCache::discard`]. Blocking (local disk).
    pub fn read(&self, id: u64, range: Option<Range<u64>>) -> Option<Bytes> {
        let exact = Name { id, range: range.as_ref().map(|r| (r.start, r.end - r.start)) };
        let (name, slice) = {
            let mut i = self.index.lock();
            if i.touch(&exact) {
                (exact, None)
            } else if let Some(r) = range.clone().filter(|r| i.whole.get(&id).is_some_and(|&size| r.end <= size)) {
                // A range of an object held whole.
                let whole = Name { id, range: None };
                i.touch(&whole);
                (whole, Some(r))
            } else {
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        let loaded = match &slice {
            Some(r) => self.load_range(&name, r.clone()),
            None => self.load(&name),
        };
        match loaded {
            Ok(data) => {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                // The order survives a restart: the file's time is its last use.
                if let Ok(f) = File::options().write(true).open(self.dir.join(name.file())) {
                    let _ = f.set_modified(SystemTime::now());
                }
                Some(data)
            }
            Err(why) => {
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                self.drop_damaged(&name, &why);
                None
            }
        }
    }

    /// Deletes the entry that answered [`DiskCache::read`] for `range` of object `id` (the exact
    /// range entry, else the whole object's): its bytes failed the caller's check.
    pub fn discard(&self, id: u64, range: Option<Range<u64>>) {
        let exact = Name { id, range: range.map(|r| (r.start, r.end - r.start)) };
        let name = match self.index.lock().entries.contains_key(&exact) {
            true => exact,
            false => Name { id, range: None },
        };
        self.drop_damaged(&name, "its bytes failed the block's own checksum");
    }

    fn drop_damaged(&self, name: &Name, why: &str) {
        self.stats.damaged.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(name.file());
        tracing::warn!(entry = %path.display(), why, "a disk cache entry is damaged; deleted, reading from the store");
        self.index.lock().remove(name);
        let _ = std::fs::remove_file(path);
    }

    /// Bytes `r` of a whole entry's payload, read alone (unchecked; see [`DiskCache::read`]).
    fn load_range(&self, name: &Name, r: Range<u64>) -> Result<Bytes, String> {
        use std::os::unix::fs::FileExt;
        let f = File::open(self.dir.join(name.file())).map_err(|e| e.to_string())?;
        let mut head = [0u8; HEADER];
        f.read_exact_at(&mut head, 0).map_err(|e| e.to_string())?;
        let (_, len) = header(&head)?;
        let on_disk = f.metadata().map_err(|e| e.to_string())?.len();
        if on_disk != HEADER as u64 + len || r.end > len {
            return Err(format!("{on_disk} bytes on disk where the header says {len}"));
        }
        let mut buf = vec![0u8; (r.end - r.start) as usize];
        f.read_exact_at(&mut buf, HEADER as u64 + r.start).map_err(|e| e.to_string())?;
        Ok(Bytes::from(buf))
    }

    /// Whether object `id` is held whole.
    pub fn has_whole(&self, id: u64) -> bool {
        self.index.lock().whole.contains_key(&id)
    }

    /// An entry's payload, checked.
    fn load(&self, name: &Name) -> Result<Bytes, String> {
        let mut f = File::open(self.dir.join(name.file())).map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).map_err(|e| e.to_string())?;
        let (sum, len) = header(&buf)?;
        let payload = &buf[HEADER..];
        if payload.len() as u64 != len {
            return Err(format!("{} bytes where the header says {len}", payload.len()));
        }
        if twox_hash::XxHash3_64::oneshot(payload) != sum {
            return Err("its checksum does not match its bytes".into());
        }
        Ok(Bytes::from(buf).slice(HEADER..))
    }

    /// Keeps `data`, bytes `range` of object `id` (all of it with `None`), evicting the least
    /// recently used entries past the limit. Blocking (local disk); a failure is logged and
    /// costs only the entry.
    pub fn insert(&self, id: u64, range: Option<Range<u64>>, data: &[u8]) {
        if data.len() as u64 > self.capacity {
            return;
        }
        let name = Name { id, range: range.map(|r| (r.start, r.end - r.start)) };
        let path = self.dir.join(name.file());
        let write = || -> std::io::Result<()> {
            let parent = path.parent().expect("entries live in a subdirectory");
            std::fs::create_dir_all(parent)?;
            let tmp = parent.join(format!(".tmp-{:016x}", rand::random::<u64>()));
            let mut f = File::create(&tmp)?;
            let mut head = Vec::with_capacity(HEADER);
            head.extend_from_slice(MAGIC);
            head.extend_from_slice(&twox_hash::XxHash3_64::oneshot(data).to_le_bytes());
            head.extend_from_slice(&(data.len() as u64).to_le_bytes());
            let done = f.write_all(&head).and_then(|_| f.write_all(data)).and_then(|_| std::fs::rename(&tmp, &path));
            if done.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            done
        };
        match write() {
            Ok(()) => {
                self.index.lock().add(name, data.len() as u64);
                self.stats.written.fetch_add(1, Ordering::Relaxed);
                self.evict();
            }
            Err(e) => tracing::warn!(entry = %path.display(), error = %e, "writing a disk cache entry failed"),
        }
    }

    /// Deletes the least recently used entries until the bytes fit.
    fn evict(&self) {
        loop {
            let victim = {
                let mut i = self.index.lock();
                if i.bytes <= self.capacity {
                    return;
                }
                let Some(name) = i.order.first_key_value().map(|(_, n)| n.clone()) else { return };
                i.remove(&name);
                name
            };
            let _ = std::fs::remove_file(self.dir.join(victim.file()));
            self.stats.evicted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (entries, bytes) held now.
    #[cfg(test)]
    pub fn usage(&self) -> (usize, u64) {
        let i = self.index.lock();
        (i.entries.len(), i.bytes)
    }
}

/// An entry file's checksum and payload length, from its first bytes.
fn header(buf: &[u8]) -> Result<(u64, u64), String> {
    if buf.len() < HEADER || &buf[..8] != MAGIC {
        return Err("not an entry of this format".into());
    }
    let sum = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
    let len = u64::from_le_bytes(buf[16..24].try_into().expect("8 bytes"));
    Ok((sum, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(seed: u8, n: usize) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn entries_survive_a_restart_and_ranges_read_from_whole_objects() {
        let dir = tempfile::tempdir().unwrap();
        let c = DiskCache::open(dir.path(), "vol", 1 << 20).unwrap();
        assert!(c.read(1, None).is_none());
        c.insert(1, None, &bytes(1, 1000));
        c.insert(2, Some(100..300), &bytes(2, 200));
        drop(c);
        let c = DiskCache::open(dir.path(), "vol", 1 << 20).unwrap();
        assert_eq!(c.usage(), (2, 1200));
        assert_eq!(&c.read(1, None).unwrap()[..], &bytes(1, 1000)[..]);
        assert_eq!(&c.read(1, Some(10..20)).unwrap()[..], &bytes(1, 1000)[10..20], "a range of a whole entry");
        assert_eq!(&c.read(2, Some(100..300)).unwrap()[..], &bytes(2, 200)[..]);
        assert!(c.read(2, Some(100..200)).is_none(), "another range of a range entry is a miss");
        assert!(c.read(1, Some(990..1010)).is_none(), "past the object's end");
        assert_eq!(c.stats.hits.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_range_of_a_whole_entry_is_read_alone_and_a_caller_discards_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let c = DiskCache::open(dir.path(), "vol", 1 << 20).unwrap();
        c.insert(3, None, &bytes(3, 5000));
        let path = dir.path().join("vol").join(Name { id: 3, range: None }.file());
        let mut raw = std::fs::read(&path).unwrap();
        raw[HEADER + 4000] ^= 0x08;
        std::fs::write(&path, raw).unwrap();
        // A range away from the flip reads as kept: only its bytes are read, and its reader
        // checks them against its own checksum.
        assert_eq!(&c.read(3, Some(10..20)).unwrap()[..], &bytes(3, 5000)[10..20]);
        let bad = c.read(3, Some(3990..4010)).unwrap();
        assert_ne!(&bad[..], &bytes(3, 5000)[3990..4010], "not checked here");
        c.discard(3, Some(3990..4010));
        assert!(!path.exists() && c.read(3, Some(10..20)).is_none(), "the whole entry is gone");
        assert_eq!(c.stats.damaged.load(Ordering::Relaxed), 1);
        // A torn whole entry is refused for a range too.
        c.insert(4, None, &bytes(4, 5000));
        let path = dir.path().join("vol").join(Name { id: 4, range: None }.file());
        let raw = std::fs::read(&path).unwrap();
        std::fs::write(&path, &raw[..raw.len() - 1]).unwrap();
        assert!(c.read(4, Some(0..10)).is_none());
        assert_eq!(c.stats.damaged.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_damaged_entry_is_deleted_and_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let c = DiskCache::open(dir.path(), "vol", 1 << 20).unwrap();
        c.insert(7, None, &bytes(7, 5000));
        let path = dir.path().join("vol").join(Name { id: 7, range: None }.file());
        let mut raw = std::fs::read(&path).unwrap();
        raw[HEADER + 4321] ^= 0x08;
        std::fs::write(&path, raw).unwrap();
        assert!(c.read(7, None).is_none());
        assert!(c.read(7, Some(0..10)).is_none());
        assert_eq!(c.stats.damaged.load(Ordering::Relaxed), 1);
        assert!(!path.exists(), "the damaged file is gone");
        // A torn file (shorter than its header says) fails the same way, after a restart too.
        c.insert(8, None, &bytes(8, 5000));
        let path = dir.path().join("vol").join(Name { id: 8, range: None }.file());
        let raw = std::fs::read(&path).unwrap();
        std::fs::write(&path, &raw[..raw.len() - 1]).unwrap();
        let c = DiskCache::open(dir.path(), "vol", 1 << 20).unwrap();
        assert!(c.read(8, None).is_none());
        assert_eq!(c.stats.damaged.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_least_recently_used_entries_go_first_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let c = DiskCache::open(dir.path(), "vol", 3000).unwrap();
        for id in 1..=3 {
            c.insert(id, None, &bytes(id as u8, 1000));
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // Entry 1 used last: 2 is now the oldest.
        c.read(1, None).unwrap();
        c.insert(4, None, &bytes(4, 1000));
        assert!(c.read(2, None).is_none(), "the least recently used entry was evicted");
        assert_eq!(c.usage(), (3, 3000));
        drop(c);
        // After a restart with a smaller limit, the oldest uses go first (3, then 1... by time).
        std::thread::sleep(std::time::Duration::from_millis(20));
        let c = DiskCache::open(dir.path(), "vol", 2000).unwrap();
        assert_eq!(c.usage(), (2, 2000));
        assert!(c.read(3, None).is_none(), "3 was used before 1 and 4");
        assert!(c.read(1, None).is_some() && c.read(4, None).is_some());
    }
}
