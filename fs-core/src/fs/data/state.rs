//! The data state of one inode in this mount ([`FileState`], behind the [`OpenFile`] lock): its
//! block map as of the last open or commit, its size, its dirty blocks, the quota held for them,
//! read-ahead and lock owners.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::AtomicUsize;

use tokio::sync::{Mutex, MutexGuard};

use super::dirty::Dirty;
use crate::FsResult;
use crate::wire::pb;

/// The data state of one inode in this mount.
#[derive(Default)]
pub struct FileState {
    pub ino: u64,
    /// Block index → committed block, as of the last open or commit. Valid when `loaded`.
    pub(super) map: HashMap<u64, pb::BlockRef>,
    pub(super) loaded: bool,
    /// The size the server had at the last open, commit or truncate.
    pub(super) server_size: u64,
    /// The end of the furthest write not committed yet (0: none).
    pub(super) written_end: u64,
    pub(super) dirty: BTreeMap<u64, Dirty>,
    /// The server's change counter when this mount last synchronised with it.
    pub(super) change: Option<u64>,
    /// Quota this session holds on the server for the inode.
    pub(super) held: u64,
    /// A byte quota applies to the file (from the last open): writes reserve before accepting.
    pub quota_limited: bool,
    /// Where a sequential reader would read next, and how far read-ahead has been issued.
    pub(super) next_read: u64,
    pub(super) readahead_to: u64,
    /// POSIX lock owners that locked this file through this mount (close drops their locks).
    pub lock_owners: HashSet<u64>,
    /// A task retries the commit its last close could not make ([`crate::fs::StratusFs`]).
    pub(crate) retrying: bool,
}

impl FileState {
    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    pub fn size(&self) -> u64 {
        self.server_size.max(self.written_end)
    }

    /// Bytes the dirty blocks add to what is stored (what a commit will charge to quotas).
    pub(super) fn growth(&self) -> u64 {
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

#[cfg(test)]
mod tests {
    use super::*;

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
