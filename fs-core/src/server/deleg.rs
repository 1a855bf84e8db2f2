//! Directory delegations (docs/write-back-metadata.md), the server's side: which session holds
//! which directory, and recalls.
//!
//! Delegations live in memory only (a restart ends every one). A grant is made inside a write
//! transaction, and every change checks, inside its own transaction, that no inode it names is
//! delegated to another session ([`Delegations::conflict`]), so a change and a grant never
//! interleave. A request that meets another session's delegation recalls it
//! ([`Delegations::recall`]: an event on the holder's Watch stream) and runs again once the holder
//! gave it back, the holder's session ended, or the recall timed out (the delegation is then
//! revoked and the holder's later Apply refused).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use crate::server::access::{Caller, SessionId};
use crate::wire::error::{MetaError, MetaResult};
use crate::wire::pb;

/// Inode numbers and open ids reserved per grant.
pub const RESERVED: u64 = 4096;
/// Directories with more names than this are not delegated (the grant sends every name).
pub const MAX_NAMES: usize = 4096;

/// A session's stream of server events.
pub type Events = mpsc::UnboundedSender<Result<pb::WatchEvent, tonic::Status>>;

/// Several ranges of numbers.
pub struct Ranges(Vec<Range<u64>>);

impl Ranges {
    pub fn contains(&self, n: &u64) -> bool {
        self.0.iter().any(|r| r.contains(n))
    }
}

/// One delegation.
pub struct Held {
    pub session: SessionId,
    pub epoch: u64,
    /// Every range granted under this epoch (a renewal adds one; pending creates may still use
    /// an earlier one).
    pub inos: Vec<Range<u64>>,
    pub open_ids: Vec<Range<u64>>,
    events: Events,
    recalled: bool,
    /// Set to true when it ends (given back, revoked, session ended).
    ended: watch::Sender<bool>,
}

pub struct Delegations {
    held: Mutex<HashMap<u64, Held>>,
    next_epoch: AtomicU64,
    /// How long a holder has to give a recalled delegation back.
    recall_timeout: Mutex<Duration>,
    granted: AtomicU64,
    recalled: AtomicU64,
    revoked: AtomicU64,
}

impl Default for Delegations {
    fn default() -> Self {
        Delegations {
            held: Mutex::new(HashMap::new()),
            next_epoch: AtomicU64::new(1),
            recall_timeout: Mutex::new(Duration::from_secs(30)),
            granted: AtomicU64::new(0),
            recalled: AtomicU64::new(0),
            revoked: AtomicU64::new(0),
        }
    }
}

impl Delegations {
    /// Events since start, for the metrics.
    pub fn counts(&self) -> [(&'static str, u64); 3] {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [("granted", n(&self.granted)), ("recalled", n(&self.recalled)), ("revoked", n(&self.revoked))]
    }

    pub fn set_recall_timeout(&self, d: Duration) {
        *self.recall_timeout.lock() = d;
    }

    /// The first of `inos` delegated to a session other than the caller's.
    pub fn conflict(&self, c: &Caller, inos: &[u64]) -> Option<u64> {
        let held = self.held.lock();
        if held.is_empty() {
            return None;
        }
        inos.iter().copied().find(|i| held.get(i).is_some_and(|h| h.session != c.session))
    }

    /// [`Self::conflict`] as an error, for inside a transaction.
    pub fn check(&self, c: &Caller, inos: &[u64]) -> MetaResult<()> {
        match self.conflict(c, inos) {
            Some(dir) => Err(MetaError::Delegated(dir)),
            None => Ok(()),
        }
    }

    /// Records a grant (called inside the write transaction that reserved the ranges). A session
    /// that already holds `dir` gets fresh ranges under the same epoch.
    pub fn grant(
        &self,
        c: &Caller,
        dir: u64,
        inos: Range<u64>,
        open_ids: Range<u64>,
        events: Events,
    ) -> MetaResult<u64> {
        let mut held = self.held.lock();
        if let Some(h) = held.get_mut(&dir) {
            if h.session != c.session || h.recalled {
                return Err(MetaError::fs(libc::EBUSY, format!("directory {dir} is delegated to another session")));
            }
            h.inos.push(inos);
            h.open_ids.push(open_ids);
            return Ok(h.epoch);
        }
        let epoch = self.next_epoch.fetch_add(1, Ordering::Relaxed);
        self.granted.fetch_add(1, Ordering::Relaxed);
        let (ended, _) = watch::channel(false);
        let (inos, open_ids) = (vec![inos], vec![open_ids]);
        held.insert(dir, Held { session: c.session, epoch, inos, open_ids, events, recalled: false, ended });
        Ok(epoch)
    }

    /// The ranges of the caller's delegation on `dir` under `epoch`; an error when it ended.
    pub fn ranges(&self, c: &Caller, dir: u64, epoch: u64) -> MetaResult<(Ranges, Ranges)> {
        match self.held.lock().get(&dir) {
            Some(h) if h.session == c.session && h.epoch == epoch => {
                Ok((Ranges(h.inos.clone()), Ranges(h.open_ids.clone())))
            }
            _ => Err(MetaError::fs(
                libc::ESTALE,
                format!(
                    "the delegation of directory {dir} (epoch {epoch}) has ended (recalled and not given back in \
                     time, the session expired, or the server restarted); its unapplied creates are lost"
                ),
            )),
        }
    }

    /// Ends the caller's delegation on `dir` (after its last Apply).
    pub fn give_back(&self, c: &Caller, dir: u64, epoch: u64) {
        let mut held = self.held.lock();
        if held.get(&dir).is_some_and(|h| h.session == c.session && h.epoch == epoch) {
            let h = held.remove(&dir).expect("checked");
            h.ended.send_replace(true);
        }
    }

    /// Ends every delegation of a session (it ended).
    pub fn drop_session(&self, session: &SessionId) {
        self.held.lock().retain(|_, h| {
            let keep = &h.session != session;
            if !keep {
                h.ended.send_replace(true);
            }
            keep
        });
    }

    /// Recalls every delegation (before a quota changes: none is granted under a quota).
    pub async fn recall_all(&self) {
        let dirs: Vec<u64> = self.held.lock().keys().copied().collect();
        futures::future::join_all(dirs.into_iter().map(|d| self.recall(d))).await;
    }

    /// Asks the holder of `dir` to give it back and waits until the delegation ended (revoking it
    /// after the recall timeout).
    pub async fn recall(&self, dir: u64) {
        let (mut ended, epoch) = {
            let mut held = self.held.lock();
            let Some(h) = held.get_mut(&dir) else { return };
            if !h.recalled {
                h.recalled = true;
                self.recalled.fetch_add(1, Ordering::Relaxed);
                let event = pb::WatchEvent { recall_dir: dir, epoch: h.epoch };
                if h.events.send(Ok(event)).is_err() {
                    // No stream to tell the holder: nothing can come back.
                    tracing::warn!(dir, "delegation revoked: its holder's event stream is closed");
                    self.revoked.fetch_add(1, Ordering::Relaxed);
                    held.remove(&dir).expect("present").ended.send_replace(true);
                    return;
                }
                tracing::debug!(dir, epoch = h.epoch, "recalling a delegation");
            }
            (h.ended.subscribe(), h.epoch)
        };
        let timeout = *self.recall_timeout.lock();
        if tokio::time::timeout(timeout, ended.wait_for(|e| *e)).await.is_err() {
            let mut held = self.held.lock();
            if held.get(&dir).is_some_and(|h| h.epoch == epoch) {
                tracing::warn!(
                    dir,
                    epoch,
                    timeout_ms = timeout.as_millis() as u64,
                    "delegation revoked: its holder did not give it back in time (its unapplied creates are lost)"
                );
                held.remove(&dir).expect("present").ended.send_replace(true);
                self.revoked.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
