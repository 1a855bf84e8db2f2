//! Directory quotas. Every inode records the nearest enclosing quota directory (`quota_root`);
//! each quota directory records the next one out (`parent_quota`), and a change in usage is
//! charged along that chain ([`super::ns::charge`]). Rename and link across quota directories
//! fail with EXDEV, so an inode never changes its quota directory.

use std::collections::HashSet;

use redb::ReadableTable;

use super::error::{MetaError, MetaResult};
use super::schema::dec;
use super::tx::*;
use crate::proto::{pb, rec};

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
