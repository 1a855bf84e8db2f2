//! Attributes from this mount's recent replies: what the server said an inode looked like right
//! after this mount's own change (a commit, a create or unlink in a directory), answered to the
//! kernel's next GETATTR for the attribute TTL instead of a round trip.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::wire::pb;

/// Attributes a reply of the server carried, when they arrived, and the [`RecentAttrs::epoch`] they
/// are valid in.
type Recent = (pb::Attr, std::time::Instant, u64);

/// The remembered attributes, and the epoch that voids them all at once.
pub struct RecentAttrs {
    /// Bumped by every change this mount makes to inodes outside a file's data path (setattr,
    /// link, unlink, rename, xattrs): it voids every remembered attribute at once.
    epoch: AtomicU64,
    /// By inode: attributes from this mount's last replies (see [`RecentAttrs::get`]).
    recent: parking_lot::Mutex<HashMap<u64, Recent>>,
    ttl: Duration,
}

impl RecentAttrs {
    pub fn new(ttl: Duration) -> RecentAttrs {
        RecentAttrs { epoch: AtomicU64::new(0), recent: Default::default(), ttl }
    }

    /// Voids every remembered attribute; returns the epoch before.
    pub fn bump(&self) -> u64 {
        self.epoch.fetch_add(1, Ordering::SeqCst)
    }

    /// The attributes of `ino` as this mount's last commit of the file, or last change in the
    /// directory, left them: while they are younger than the attribute TTL and nothing else this
    /// mount did since can have changed them (no write or open of the file; `epoch` unchanged, which
    /// every change that does not report its effect moves). A `stat` after `close`, or the kernel's
    /// GETATTR of a directory after a create or unlink in it, then costs no round trip. Other
    /// mounts' changes show after the TTL, as with the kernel's own attribute cache.
    pub fn get(&self, ino: u64) -> Option<pb::Attr> {
        let g = self.recent.lock();
        let (a, at, e) = g.get(&ino)?;
        (*e == self.epoch() && at.elapsed() < self.ttl).then_some(*a)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Remembers attributes from a reply, valid in `epoch`. Of two replies about one inode in the
    /// same epoch, the later state (higher change counter) stays.
    pub fn remember(&self, attr: Option<pb::Attr>, epoch: u64) {
        let Some(attr) = attr else { return };
        let mut g = self.recent.lock();
        if let Some((old, _, e)) = g.get(&attr.ino)
            && *e == epoch
            && old.change > attr.change
        {
            return;
        }
        if g.len() >= 4096 {
            let ttl = self.ttl;
            g.retain(|_, (_, at, _)| at.elapsed() < ttl);
        }
        g.insert(attr.ino, (attr, Instant::now(), epoch));
    }

    pub fn forget(&self, ino: u64) {
        self.recent.lock().remove(&ino);
    }
}
