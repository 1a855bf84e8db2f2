//! What a mount that outlives its process (a crashed CSI node plugin whose FUSE fds a holder
//! kept) needs from the filesystem. While it serves: which files hold writes not stored yet, told
//! to a watcher as that changes (the node plugin tells its fd holder). In the process that adopts
//! the mount after the crash: those files' writes died with the crashed process, so they are
//! reported lost: EIO on the next fsync of each such file and on the close of every handle of it
//! opened before the crash, each counted and logged. A success over lost bytes is never given.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::StratusFs;

/// Told `(inode, true)` before a write that leaves the file with unsaved bytes is answered, and
/// `(inode, false)` once an fsync, close or commit found it with none.
pub type UnsavedWatcher = Arc<dyn Fn(u64, bool) + Send + Sync>;

#[derive(Default)]
pub(super) struct CrashState {
    watcher: Option<UnsavedWatcher>,
    /// Inodes the watcher was told hold unsaved writes.
    told: HashSet<u64>,
    /// Inodes whose unsaved writes died with the previous process.
    lost: HashMap<u64, Lost>,
}

#[derive(Default)]
struct Lost {
    /// The next fsync of the file was answered EIO.
    fsync_reported: bool,
    /// Handles (opened before the crash) whose close was answered EIO.
    closed: HashSet<u64>,
}

impl StratusFs {
    /// Tells `w` which files hold unsaved writes from now on (see [`UnsavedWatcher`]).
    pub fn watch_unsaved(&self, w: UnsavedWatcher) {
        let mut c = self.crash.lock();
        for &ino in &c.told {
            w(ino, true);
        }
        c.watcher = Some(w);
    }

    /// After a crash: these files' unsaved writes died with the process that held them.
    pub fn mark_lost(&self, inos: &[u64]) {
        let mut c = self.crash.lock();
        for &ino in inos {
            tracing::error!(
                ino,
                "the crashed process held writes to this file that were not stored: its next fsync and the close of each handle opened before the crash get EIO"
            );
            c.lost.insert(ino, Lost::default());
            // Still unsaved as far as a watcher knows, until a commit finds the file clean.
            c.told.insert(ino);
        }
    }

    /// Lost writes reported so far.
    pub fn lost_reported(&self) -> u64 {
        self.lost_reported.load(Ordering::Relaxed)
    }

    /// Tells the watcher whether `ino` holds unsaved writes now.
    pub(super) fn note_unsaved(&self, ino: u64, unsaved: bool) {
        let w = {
            let mut c = self.crash.lock();
            let changed = if unsaved { c.told.insert(ino) } else { c.told.remove(&ino) };
            match (changed, &c.watcher) {
                (true, Some(w)) => w.clone(),
                _ => return,
            }
        };
        w(ino, unsaved);
    }

    /// Whether this fsync of `ino` must report lost writes (once per file).
    pub(super) fn lost_on_fsync(&self, ino: u64) -> bool {
        let mut c = self.crash.lock();
        let Some(l) = c.lost.get_mut(&ino) else { return false };
        if l.fsync_reported {
            return false;
        }
        l.fsync_reported = true;
        self.lost_reported.fetch_add(1, Ordering::Relaxed);
        tracing::error!(ino, "fsync answered EIO: writes to this file died with the crashed node plugin");
        true
    }

    /// Whether this close of handle `fh` of `ino` must report lost writes: a handle opened before
    /// the crash (not `known` to this process), once.
    pub(super) fn lost_on_close(&self, ino: u64, fh: u64, known: bool) -> bool {
        if known {
            return false;
        }
        let mut c = self.crash.lock();
        let Some(l) = c.lost.get_mut(&ino) else { return false };
        if !l.closed.insert(fh) {
            return false;
        }
        self.lost_reported.fetch_add(1, Ordering::Relaxed);
        tracing::error!(ino, fh, "close answered EIO: writes to this file died with the crashed node plugin");
        true
    }
}
