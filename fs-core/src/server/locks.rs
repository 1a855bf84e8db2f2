//! The lock table: POSIX byte-range locks (fcntl) and BSD locks (flock), across all sessions.
//!
//! The table in memory is authoritative; every change of an inode's locks is also written to the
//! `locks` table (by the caller, in order) so granted locks survive a restart. A blocked F_SETLKW
//! is a [`Waiter`]: the server wakes it when a release makes its lock grantable (no polling), and
//! dropping the waiter (the client cancelled the call) withdraws it.
//!
//! Ownership: a lock belongs to (session, owner). POSIX and flock locks never conflict with each
//! other (as on Linux). Ranges are inclusive; `end == u64::MAX` means "to the end of the file".

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::server::access::SessionId;
use crate::wire::{pb, rec};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lock {
    pub session: SessionId,
    pub owner: u64,
    pub kind: pb::LockKind,
    pub write: bool,
    pub start: u64,
    pub end: u64,
    pub pid: u32,
    pub open_id: u64,
}

impl Lock {
    fn same_owner(&self, o: &Lock) -> bool {
        self.session == o.session && self.owner == o.owner && self.kind == o.kind
    }
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start <= end && start <= self.end
    }
    /// Whether `self` (held) blocks a request for `want`.
    pub fn conflicts(&self, want: &Lock) -> bool {
        self.kind == want.kind
            && !self.same_owner(want)
            && self.overlaps(want.start, want.end)
            && (self.write || want.write)
    }

    pub fn to_rec(&self) -> rec::Lock {
        rec::Lock {
            session: self.session.to_vec(),
            owner: self.owner,
            kind: self.kind as i32,
            r#type: if self.write { pb::LockType::Write } else { pb::LockType::Read } as i32,
            start: self.start,
            end: self.end,
            pid: self.pid,
            open_id: self.open_id,
        }
    }

    pub fn from_rec(r: &rec::Lock) -> Option<Lock> {
        Some(Lock {
            session: r.session.as_slice().try_into().ok()?,
            owner: r.owner,
            kind: r.kind(),
            write: r.r#type() == pb::LockType::Write,
            start: r.start,
            end: r.end,
            pid: r.pid,
            open_id: r.open_id,
        })
    }
}

/// Applies `want` (or, with `unlock`, removes its range) to the owner's locks in `held`, splitting
/// and merging ranges as POSIX says. The caller has checked conflicts.
fn apply(held: &mut Vec<Lock>, want: &Lock, unlock: bool) {
    let (s, e) = (want.start, want.end);
    let mut out = Vec::with_capacity(held.len() + 2);
    let mut merged = want.clone();
    for l in held.drain(..) {
        if !l.same_owner(want) {
            out.push(l);
            continue;
        }
        if want.kind == pb::LockKind::Flock {
            // flock is whole-file: the owner's previous flock is replaced or removed.
            continue;
        }
        let touches = l.start <= e.saturating_add(1) && s.saturating_sub(1) <= l.end;
        if !touches {
            out.push(l);
        } else if !unlock && l.write == want.write {
            merged.start = merged.start.min(l.start);
            merged.end = merged.end.max(l.end);
        } else if l.overlaps(s, e) {
            if l.start < s {
                out.push(Lock { end: s - 1, ..l.clone() });
            }
            if l.end > e {
                out.push(Lock { start: e + 1, ..l });
            }
        } else {
            out.push(l);
        }
    }
    if !unlock {
        out.push(merged);
    }
    out.sort_by_key(|l| (l.start, l.end));
    *held = out;
}

struct Waiting {
    id: u64,
    want: Lock,
    wake: oneshot::Sender<()>,
}

#[derive(Default)]
struct State {
    held: HashMap<u64, Vec<Lock>>,
    waiting: HashMap<u64, Vec<Waiting>>,
    next_waiter: u64,
}

/// Every lock of one volume.
#[derive(Default, Clone)]
pub struct LockTable {
    state: Arc<Mutex<State>>,
}

/// What a set-lock request came to.
pub enum SetOutcome {
    /// Granted (or unlocked); the inode's new lock list was persisted.
    Done,
    /// Conflicts and the caller does not wait.
    Conflict(Lock),
    /// Conflicts; await the waiter.
    Wait(Waiter),
}

/// A queued F_SETLKW. Resolves when the lock has been granted; dropping it withdraws the request.
pub struct Waiter {
    table: LockTable,
    ino: u64,
    id: u64,
    rx: Option<oneshot::Receiver<()>>,
}

impl Waiter {
    /// Waits until the lock is granted. The lock list to persist is then read with
    /// [`LockTable::list`].
    pub async fn granted(mut self) {
        if let Some(rx) = self.rx.take() {
            let _ = rx.await;
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut st = self.table.state.lock();
        if let Some(q) = st.waiting.get_mut(&self.ino) {
            q.retain(|w| w.id != self.id);
            if q.is_empty() {
                st.waiting.remove(&self.ino);
            }
        }
    }
}

/// Callback run under the table's lock with the inode and its new lock list: the caller enqueues
/// the write of the list there, so writes reach the database in the order the changes happened.
pub type Persist<'a> = &'a mut dyn FnMut(u64, &[Lock]);

impl LockTable {
    /// Loads granted locks (at start-up).
    pub fn restore(&self, ino: u64, locks: Vec<Lock>) {
        self.state.lock().held.insert(ino, locks);
    }

    #[cfg(test)]
    pub fn list(&self, ino: u64) -> Vec<Lock> {
        self.state.lock().held.get(&ino).cloned().unwrap_or_default()
    }

    /// The lock that would block `want` (F_GETLK), if any.
    pub fn test(&self, ino: u64, want: &Lock) -> Option<Lock> {
        let st = self.state.lock();
        st.held.get(&ino)?.iter().find(|l| l.conflicts(want)).cloned()
    }

    /// F_SETLK / F_SETLKW / flock. `unlock` releases the range instead.
    pub fn set(&self, ino: u64, want: Lock, unlock: bool, wait: bool, persist: Persist) -> SetOutcome {
        let mut st = self.state.lock();
        let conflict = match unlock {
            true => None,
            false => st.held.get(&ino).and_then(|h| h.iter().find(|l| l.conflicts(&want)).cloned()),
        };
        if let Some(c) = conflict {
            if !wait {
                return SetOutcome::Conflict(c);
            }
            let (tx, rx) = oneshot::channel();
            st.next_waiter += 1;
            let id = st.next_waiter;
            st.waiting.entry(ino).or_default().push(Waiting { id, want, wake: tx });
            return SetOutcome::Wait(Waiter { table: self.clone(), ino, id, rx: Some(rx) });
        }
        apply(st.held.entry(ino).or_default(), &want, unlock);
        Self::grant_waiters(&mut st, ino);
        let list = st.held.get(&ino).cloned().unwrap_or_default();
        persist(ino, &list);
        SetOutcome::Done
    }

    /// Drops every lock matching `pred` on `ino` (release of a file handle, end of a session) and
    /// wakes waiters that can now go.
    pub fn release_where(&self, ino: u64, pred: impl Fn(&Lock) -> bool, persist: Persist) {
        let mut st = self.state.lock();
        let Some(held) = st.held.get_mut(&ino) else {
            return;
        };
        let before = held.len();
        held.retain(|l| !pred(l));
        if held.len() == before {
            return;
        }
        Self::grant_waiters(&mut st, ino);
        let list = st.held.get(&ino).cloned().unwrap_or_default();
        persist(ino, &list);
    }

    /// Every inode on which `session` holds a lock.
    pub fn inodes_of(&self, session: &SessionId) -> Vec<u64> {
        let st = self.state.lock();
        st.held.iter().filter(|(_, ls)| ls.iter().any(|l| &l.session == session)).map(|(ino, _)| *ino).collect()
    }

    pub fn count_of(&self, session: &SessionId) -> usize {
        let st = self.state.lock();
        st.held.values().flatten().filter(|l| &l.session == session).count()
    }

    /// Grants queued requests in arrival order while they do not conflict.
    fn grant_waiters(st: &mut State, ino: u64) {
        let Some(mut queue) = st.waiting.remove(&ino) else {
            return;
        };
        let held = st.held.entry(ino).or_default();
        let mut still = Vec::new();
        for w in queue.drain(..) {
            if w.wake.is_closed() {
                continue;
            }
            if held.iter().any(|l| l.conflicts(&w.want)) {
                still.push(w);
            } else {
                apply(held, &w.want, false);
                let _ = w.wake.send(());
            }
        }
        if !still.is_empty() {
            st.waiting.insert(ino, still);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lk(session: u8, owner: u64, write: bool, start: u64, end: u64) -> Lock {
        Lock { session: [session; 16], owner, kind: pb::LockKind::Posix, write, start, end, pid: 1, open_id: 1 }
    }

    fn set(t: &LockTable, l: Lock) -> bool {
        matches!(t.set(7, l, false, false, &mut |_, _| {}), SetOutcome::Done)
    }

    fn ranges(t: &LockTable) -> Vec<(u64, u64, bool)> {
        t.list(7).iter().map(|l| (l.start, l.end, l.write)).collect()
    }

    #[test]
    fn same_owner_ranges_merge_and_split() {
        let t = LockTable::default();
        assert!(set(&t, lk(1, 1, true, 0, 9)));
        assert!(set(&t, lk(1, 1, true, 10, 19)));
        assert_eq!(ranges(&t), [(0, 19, true)], "adjacent ranges of one type merge");
        assert!(set(&t, lk(1, 1, false, 5, 14)));
        assert_eq!(ranges(&t), [(0, 4, true), (5, 14, false), (15, 19, true)], "a read lock splits a write lock");
        t.set(7, lk(1, 1, false, 0, u64::MAX), true, false, &mut |_, _| {});
        assert!(ranges(&t).is_empty(), "unlock to EOF removes everything");
    }

    #[test]
    fn conflicts_between_owners_and_read_sharing() {
        let t = LockTable::default();
        assert!(set(&t, lk(1, 1, false, 0, 99)));
        assert!(set(&t, lk(2, 1, false, 50, 150)), "read locks share");
        assert!(!set(&t, lk(2, 2, true, 10, 10)), "a write lock conflicts with a read lock of another owner");
        assert!(set(&t, lk(1, 1, true, 0, 9)), "upgrade within own range that no one else reads");
        let c = t.test(7, &lk(3, 1, true, 60, 60)).unwrap();
        assert_eq!(c.session, [1; 16], "F_GETLK reports the first conflicting lock");
    }

    #[test]
    fn posix_and_flock_do_not_conflict() {
        let t = LockTable::default();
        assert!(set(&t, lk(1, 1, true, 0, u64::MAX)));
        let mut f = lk(2, 9, true, 0, u64::MAX);
        f.kind = pb::LockKind::Flock;
        assert!(set(&t, f));
    }

    #[tokio::test]
    async fn a_waiter_is_woken_by_the_release_and_a_dropped_one_is_withdrawn() {
        let t = LockTable::default();
        assert!(set(&t, lk(1, 1, true, 0, 9)));
        let SetOutcome::Wait(w) = t.set(7, lk(2, 1, true, 5, 5), false, true, &mut |_, _| {}) else {
            panic!("should wait")
        };
        let SetOutcome::Wait(dropped) = t.set(7, lk(3, 1, true, 5, 5), false, true, &mut |_, _| {}) else {
            panic!("should wait")
        };
        drop(dropped);
        let mut persisted = Vec::new();
        t.set(7, lk(1, 1, true, 0, 9), true, false, &mut |_, l| persisted = l.to_vec());
        tokio::time::timeout(std::time::Duration::from_secs(1), w.granted()).await.unwrap();
        assert_eq!(persisted.len(), 1);
        assert_eq!(persisted[0].session, [2; 16], "the woken waiter holds the lock, the dropped one does not");
    }
}
