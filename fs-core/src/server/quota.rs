//! Directory quotas. Every inode records the nearest enclosing quota directory (`quota_root`);
//! each quota directory records the next one out (`parent_quota`), and a change in usage is
//! charged along that chain ([`crate::server::ns::charge`]). Rename and link across quota directories
//! fail with EXDEV, so an inode never changes its quota directory.

use std::collections::HashSet;

use redb::ReadableTable;

use crate::server::store::schema::dec;
use crate::server::store::tx::*;
use crate::wire::error::{MetaError, MetaResult};
use crate::wire::{pb, rec};

/// Puts a quota on directory `dir` (or changes its limits). A new quota directory adopts its
/// subtree: the inodes in it are counted and re-pointed at it.
pub fn set_dir_quota(w: &mut W, dir: u64, quota: pb::Quota, path: &str) -> MetaResult<()> {
    let inode = w.dir(dir)?;
    if let Some(mut q) = w.quota(dir)? {
        q.quota = Some(quota);
        return w.put_quota(dir, &q);
    }
    let enclosing = inode.quota_root;
    let mut q =
        rec::QuotaDir { quota: Some(quota), parent_quota: enclosing, path: path.to_string(), ..Default::default() };
    let mut seen = HashSet::new();
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        let mut children = Vec::new();
        for item in w.cookies.range((d, 0)..=(d, u64::MAX))? {
            let (_, name) = item?;
            if let Some(e) = w.dentries.get((d, name.value()))? {
                children.push(dec::<rec::Dentry>(e.value())?);
            }
        }
        // The directory itself (its usage counts too).
        if seen.insert(d) {
            let mut n = w.inode(d)?;
            q.used_inodes += 1;
            n.quota_root = dir;
            w.put_inode(d, &n)?;
        }
        for c in children {
            if let Some(mut inner) = w.quota(c.ino)? {
                // A quota directory inside keeps its subtree; its usage now also counts here.
                q.used_inodes += inner.used_inodes;
                q.used_bytes += inner.used_bytes;
                inner.parent_quota = dir;
                w.put_quota(c.ino, &inner)?;
                continue;
            }
            if c.kind() == pb::FileKind::Directory {
                stack.push(c.ino);
            } else if seen.insert(c.ino) {
                let mut n = w.inode(c.ino)?;
                if n.quota_root != enclosing {
                    return Err(MetaError::Internal(format!("inode {} is in two quota directories; run fsck", c.ino)));
                }
                q.used_inodes += 1;
                q.used_bytes += attr(&n).stored;
                n.quota_root = dir;
                w.put_inode(c.ino, &n)?;
            }
        }
    }
    w.put_quota(dir, &q)
}

/// The quota levels an inode's usage counts against: 0 (the volume) and then each quota
/// directory from the nearest outwards.
pub fn levels(quota_root: u64, quota_of: impl Fn(u64) -> MetaResult<Option<rec::QuotaDir>>) -> MetaResult<Vec<u64>> {
    let mut out = vec![0];
    let mut q = quota_root;
    while q != 0 && out.len() < 65 {
        let Some(qd) = quota_of(q)? else { break };
        out.push(q);
        q = qd.parent_quota;
    }
    Ok(out)
}

/// Quota held by sessions for bytes their clients accepted in write() and have not committed
/// yet (the Reserve RPC). In memory only: a restart forgets them, and commits are still checked
/// against the quota, so nothing is ever over-committed; at worst a write accepted just before a
/// restart fails at its flush with EDQUOT.
#[derive(Default)]
pub struct Reservations {
    inner: parking_lot::Mutex<ReservationTable>,
}

#[derive(Default)]
struct ReservationTable {
    /// (session, inode) → bytes held and the levels they count against.
    held: std::collections::HashMap<(crate::server::access::SessionId, u64), (u64, Vec<u64>)>,
    /// Level → bytes held there by all sessions.
    per_level: std::collections::HashMap<u64, u64>,
}

impl ReservationTable {
    fn put(&mut self, key: (crate::server::access::SessionId, u64), bytes: u64, levels: Vec<u64>) {
        if let Some((old, old_levels)) = self.held.remove(&key) {
            for l in old_levels {
                let e = self.per_level.entry(l).or_default();
                *e = e.saturating_sub(old);
            }
        }
        if bytes > 0 {
            for &l in &levels {
                *self.per_level.entry(l).or_default() += bytes;
            }
            self.held.insert(key, (bytes, levels));
        }
    }
}

impl Reservations {
    /// Bytes held at `level` by everyone but `key`.
    pub fn others(&self, key: &(crate::server::access::SessionId, u64), level: u64) -> u64 {
        let t = self.inner.lock();
        let all = t.per_level.get(&level).copied().unwrap_or(0);
        let mine = t.held.get(key).filter(|(_, ls)| ls.contains(&level)).map_or(0, |(b, _)| *b);
        all.saturating_sub(mine)
    }

    /// Sets `key`'s reservation to `bytes` if every level has room for it next to what is used
    /// (`used(level)` gives (limit, used); limit 0 means none) and what others hold.
    pub fn reserve(
        &self,
        key: (crate::server::access::SessionId, u64),
        bytes: u64,
        levels: Vec<u64>,
        used: impl Fn(u64) -> MetaResult<(u64, u64, String)>,
    ) -> MetaResult<()> {
        let mut t = self.inner.lock();
        let mine = t.held.get(&key).map_or(0, |(b, _)| *b);
        if bytes > mine {
            for &l in &levels {
                let (max, used_now, what) = used(l)?;
                let others = t
                    .per_level
                    .get(&l)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(t.held.get(&key).filter(|(_, ls)| ls.contains(&l)).map_or(0, |(b, _)| *b));
                if max > 0 && used_now.saturating_add(others).saturating_add(bytes) > max {
                    return Err(MetaError::fs(
                        libc::EDQUOT,
                        format!(
                            "{what} quota exceeded: {used_now} of {max} bytes used, {others} held by unflushed writes, {bytes} more asked"
                        ),
                    ));
                }
            }
        }
        t.put(key, bytes, levels);
        Ok(())
    }

    /// Sets `key`'s reservation without a check (after a commit consumed part of it).
    pub fn set(&self, key: (crate::server::access::SessionId, u64), bytes: u64, levels: Vec<u64>) {
        self.inner.lock().put(key, bytes, levels);
    }

    /// Gives back everything a session held.
    pub fn drop_session(&self, session: &crate::server::access::SessionId) {
        let mut t = self.inner.lock();
        let keys: Vec<_> = t.held.keys().filter(|(s, _)| s == session).copied().collect();
        for k in keys {
            t.put(k, 0, Vec::new());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_count_against_every_level_and_are_replaced_not_added() {
        let r = Reservations::default();
        let (a, b) = (([1u8; 16], 10), ([2u8; 16], 11));
        let lim = |_: u64| Ok((100u64, 50u64, "volume".to_string()));
        r.reserve(a, 30, vec![0, 7], lim).unwrap();
        assert_eq!(r.others(&b, 0), 30);
        assert_eq!(r.others(&b, 7), 30);
        assert_eq!(r.others(&a, 7), 0);
        // 50 used + 30 held by a + 30 asked > 100.
        assert_eq!(r.reserve(b, 30, vec![0], lim).unwrap_err().errno(), libc::EDQUOT);
        r.reserve(b, 20, vec![0], lim).unwrap();
        // Replacing a's 30 by 25 fits; growing it past what is left does not.
        r.reserve(a, 25, vec![0, 7], lim).unwrap();
        assert_eq!(r.reserve(a, 31, vec![0, 7], lim).unwrap_err().errno(), libc::EDQUOT);
        r.drop_session(&[1u8; 16]);
        assert_eq!(r.others(&b, 0), 0);
        assert_eq!(r.others(&a, 0), 20);
    }
}
