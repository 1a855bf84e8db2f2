//! What a mount's filesystem hands to a successor process: its open handles with the lock owners
//! that used them, and the files they are open on. Everything else a mount holds is a cache (block
//! maps, L1, remembered attributes) or is made durable on the server first ([`StratusFs::quiesce`]).

use serde::{Deserialize, Serialize};

use super::*;

/// An open handle (the server's open id) and the POSIX lock owners that locked through it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandleState {
    pub fh: u64,
    pub ino: u64,
    pub lock_owners: Vec<u64>,
}

/// A file this mount has open.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHandover {
    pub ino: u64,
    /// This mount's handles open on it.
    pub opens: usize,
    /// A byte quota applies to it: writes reserve quota first.
    pub quota_limited: bool,
    /// POSIX lock owners that locked it through this mount (close drops their locks).
    pub lock_owners: Vec<u64>,
}

/// The filesystem's share of a handover.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsHandover {
    pub handles: Vec<HandleState>,
    pub files: Vec<FileHandover>,
}

impl StratusFs {
    /// Makes what this mount holds the server's, for a successor that resumes its session:
    /// creates under delegations are applied and the delegations given back, every file's
    /// unflushed writes are committed, quota reserved for writes is given back, and then every
    /// change this session made is made durable.
    /// Call it once no request is being served.
    pub async fn quiesce(&self) -> FsResult<()> {
        self.give_back_all().await?;
        if !self.deleg.lock().dirs.is_empty() {
            tracing::error!("a delegation is still held after giving them all back");
            return Err(libc::EIO);
        }
        let files: Vec<Arc<OpenFile>> = self.files.lock().values().cloned().collect();
        let c = Ctx::default();
        for f in files {
            let mut st = f.lock().await;
            self.data.commit(c, &mut st, false).await?;
            self.data.idle(c, &mut st).await;
        }
        // Every change of this session durable at once (commits at close, applied creates).
        self.sync_all(c).await
    }

    /// The open handles and the files they are open on (see [`FsHandover`]).
    pub async fn handles(&self) -> FsHandover {
        let mut handles: Vec<HandleState> = self
            .handles
            .lock()
            .iter()
            .map(|(&fh, h)| HandleState { fh, ino: h.ino, lock_owners: sorted(&h.lock_owners) })
            .collect();
        handles.sort_by_key(|h| h.fh);
        let open: Vec<(u64, Arc<OpenFile>)> = self.files.lock().iter().map(|(i, f)| (*i, f.clone())).collect();
        let mut files = Vec::new();
        for (ino, f) in open {
            let opens = f.opens.load(Ordering::Relaxed);
            let st = f.lock().await;
            if opens > 0 || !st.lock_owners.is_empty() {
                files.push(FileHandover {
                    ino,
                    opens,
                    quota_limited: st.quota_limited,
                    lock_owners: sorted(&st.lock_owners),
                });
            }
        }
        files.sort_by_key(|f| f.ino);
        FsHandover { handles, files }
    }

    /// Takes over a predecessor's handles (see [`FsHandover`]); block maps are read again on
    /// first use.
    pub async fn adopt_handles(&self, h: &FsHandover) {
        {
            let mut handles = self.handles.lock();
            for s in &h.handles {
                handles.insert(s.fh, Handle { ino: s.ino, lock_owners: s.lock_owners.iter().copied().collect() });
            }
        }
        for fh in &h.files {
            let f = self.file(fh.ino);
            f.opens.store(fh.opens, Ordering::Relaxed);
            let mut st = f.lock().await;
            st.quota_limited = fh.quota_limited;
            st.lock_owners = fh.lock_owners.iter().copied().collect();
        }
    }
}

fn sorted(s: &HashSet<u64>) -> Vec<u64> {
    let mut v: Vec<u64> = s.iter().copied().collect();
    v.sort_unstable();
    v
}
