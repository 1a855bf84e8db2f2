//! Namespace changes: POSIX semantics of create, link, unlink, rename, setattr and xattrs, each
//! applied inside one write transaction ([`W`]). A function that returns an error has changed
//! nothing (the transaction is aborted).

use redb::ReadableTable;

use crate::server::access::Caller;
use crate::server::acl;
use crate::server::store::tx::*;
use crate::wire::error::{MetaError, MetaResult};
use crate::wire::{pb, rec};

const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;
const S_IXGRP: u32 = 0o0010;

/// Linux's renameat2 flags.
pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;
/// Linux's setxattr flags.
pub const XATTR_CREATE: u32 = 1;
pub const XATTR_REPLACE: u32 = 2;
/// Longest symlink target and xattr value/name accepted.
pub const MAX_SYMLINK: usize = 4096;
pub const MAX_XATTR_VALUE: usize = 65536;
pub const MAX_XATTR_NAME: usize = 255;

/// Charges `inodes` and `bytes` (either may be negative) to the volume and to every quota
/// directory from `quota_root` outwards. A positive charge past a limit fails with EDQUOT.
pub fn charge(w: &mut W, quota_root: u64, inodes: i64, bytes: i64) -> MetaResult<()> {
    charge_beside(w, quota_root, inodes, bytes, |_| 0)
}

/// [`charge`], with `held(level)` bytes at each quota level (0: the volume, else the quota
/// directory) counted as used: quota other sessions reserved for their unflushed writes.
pub fn charge_beside(w: &mut W, quota_root: u64, inodes: i64, bytes: i64, held: impl Fn(u64) -> u64) -> MetaResult<()> {
    fn apply(used: u64, delta: i64) -> u64 {
        if delta >= 0 { used.saturating_add(delta as u64) } else { used.saturating_sub(delta.unsigned_abs()) }
    }
    fn check(max: u64, used: u64, delta: i64, what: &str, unit: &str) -> MetaResult<()> {
        if delta > 0 && max > 0 && used.saturating_add(delta as u64) > max {
            return Err(MetaError::fs(
                libc::EDQUOT,
                format!("{what} quota exceeded: {used} of {max} {unit} used, {delta} more asked"),
            ));
        }
        Ok(())
    }
    let vq = w.counters.quota.unwrap_or_default();
    check(vq.max_inodes, w.counters.used_inodes, inodes, "volume", "inodes")?;
    check(vq.max_bytes, w.counters.used_bytes.saturating_add(held(0)), bytes, "volume", "bytes")?;
    w.counters.used_inodes = apply(w.counters.used_inodes, inodes);
    w.counters.used_bytes = apply(w.counters.used_bytes, bytes);
    let mut q = quota_root;
    let mut hops = 0;
    while q != 0 && hops < 64 {
        let Some(mut qd) = w.quota(q)? else { break };
        let lim = qd.quota.unwrap_or_default();
        let what = format!("directory {}", if qd.path.is_empty() { q.to_string() } else { qd.path.clone() });
        check(lim.max_inodes, qd.used_inodes, inodes, &what, "inodes")?;
        check(lim.max_bytes, qd.used_bytes.saturating_add(held(q)), bytes, &what, "bytes")?;
        qd.used_inodes = apply(qd.used_inodes, inodes);
        qd.used_bytes = apply(qd.used_bytes, bytes);
        w.put_quota(q, &qd)?;
        q = qd.parent_quota;
        hops += 1;
    }
    Ok(())
}

fn set_times_now(inode: &mut rec::Inode, now: &pb::Timespec, mtime: bool) {
    let a = attr_mut(inode);
    a.ctime = Some(*now);
    if mtime {
        a.mtime = Some(*now);
    }
}

/// What a new inode is.
pub struct NewNode<'a> {
    pub kind: pb::FileKind,
    pub perm: u32,
    pub umask: u32,
    pub rdev: u64,
    pub symlink_target: Option<&'a [u8]>,
    /// The inode number (a delegation's holder chose it from its reserved range); `None`: the next.
    pub ino: Option<u64>,
    /// Its times and the directory's (a delegation's holder made it then); `None`: now.
    pub time: Option<pb::Timespec>,
}

/// Creates `name` in `parent`. Returns the new inode's number and record.
pub fn mknod(w: &mut W, c: &Caller, parent: u64, name: &[u8], node: NewNode) -> MetaResult<(u64, rec::Inode)> {
    c.writable()?;
    c.check_name(name)?;
    let mut dir = w.dir(parent)?;
    if name == b"." || name == b".." || w.dentry(parent, name)?.is_some() {
        return Err(MetaError::fs(
            libc::EEXIST,
            format!("{:?} already exists in directory {parent}", String::from_utf8_lossy(name)),
        ));
    }
    if attr(&dir).nlink == 0 {
        return Err(MetaError::fs(libc::ENOENT, format!("directory {parent} has been removed")));
    }
    let kind = node.kind;
    let mut perm = node.perm & 0o7777 & !node.umask;
    // A directory's default ACL is inherited instead of the umask (POSIX.1e); directories made
    // in it get the default ACL too.
    let mut acls: Vec<(&[u8], Vec<u8>)> = Vec::new();
    if kind == pb::FileKind::Symlink {
        perm = 0o777;
    } else if let Some(dacl) = w.xattrs.get((parent, acl::DEFAULT))?.map(|v| v.value().to_vec()) {
        let (bits, access) = acl::inherit(&dacl, node.perm & 0o7777).ok_or_else(|| {
            MetaError::Internal(format!("directory {parent} holds a default ACL that does not parse"))
        })?;
        perm = bits;
        acls.extend(access.map(|a| (acl::ACCESS, a)));
        if kind == pb::FileKind::Directory {
            acls.push((acl::DEFAULT, dacl));
        }
    }
    let (uid, mut gid) = c.owner_ids();
    let dattr = attr(&dir);
    if dattr.perm & S_ISGID != 0 {
        gid = dattr.gid;
        if kind == pb::FileKind::Directory {
            perm |= S_ISGID;
        }
    }
    let quota_root = dir.quota_root;
    charge(w, quota_root, 1, 0)?;
    let ino = match node.ino {
        Some(ino) => ino,
        None => w.next_ino(),
    };
    let now = node.time.unwrap_or(w.now);
    let target = node.symlink_target.unwrap_or_default();
    let mut inode = rec::Inode {
        attr: Some(pb::Attr {
            ino,
            kind: kind as i32,
            perm,
            nlink: if kind == pb::FileKind::Directory { 2 } else { 1 },
            uid,
            gid,
            // A sealed target's size is its plaintext's.
            size: target.len().saturating_sub(c.seal_overhead()) as u64,
            rdev: node.rdev,
            atime: Some(now),
            mtime: Some(now),
            ctime: Some(now),
            stored: 0,
            change: 0,
        }),
        parent,
        quota_root,
        next_cookie: if kind == pb::FileKind::Directory { FIRST_COOKIE } else { 0 },
        symlink_target: target.to_vec(),
        generation: 0,
    };
    w.touch_change(&mut inode);
    w.put_inode(ino, &inode)?;
    for (name, value) in &acls {
        w.xattrs.insert((ino, *name), value.as_slice())?;
    }
    w.add_dentry(parent, &mut dir, name, ino, kind)?;
    if kind == pb::FileKind::Directory {
        attr_mut(&mut dir).nlink += 1;
    }
    set_times_now(&mut dir, &now, true);
    w.touch_change(&mut dir);
    w.put_inode(parent, &dir)?;
    Ok((ino, inode))
}

/// Deletes an inode that has no links and no opens left: its blocks go to the garbage collector
/// (dereferenced now), its xattrs and locks go, its usage is released.
pub fn purge(w: &mut W, ino: u64, inode: &rec::Inode) -> MetaResult<()> {
    let mut stored: u64 = 0;
    let mut blocks = Vec::new();
    for item in w.blocks.range((ino, 0)..=(ino, u64::MAX))? {
        let (k, v) = item?;
        let b: rec::Block = crate::server::store::schema::dec(v.value())?;
        stored += b.len as u64;
        blocks.push((k.value().1, b));
    }
    for (index, b) in blocks {
        crate::server::data::deref_block(w, ino, index, &b)?;
    }
    let names: Vec<Vec<u8>> = w
        .xattrs
        .range((ino, &[][..])..)?
        .map_while(|item| item.ok().filter(|(k, _)| k.value().0 == ino).map(|(k, _)| k.value().1.to_vec()))
        .collect();
    for n in names {
        w.xattrs.remove((ino, n.as_slice()))?;
    }
    w.locks.remove(ino)?;
    w.orphans.remove(ino)?;
    w.quotas.remove(ino)?;
    w.inodes.remove(ino)?;
    charge(w, inode.quota_root, -1, -(stored as i64))
}

fn is_open(w: &W, ino: u64) -> MetaResult<bool> {
    Ok(w.open_by_ino.range((ino, 0)..=(ino, u64::MAX))?.next().is_some())
}

/// Drops one link of a non-directory: at zero links it is purged, or kept as an orphan while open.
fn drop_link(w: &mut W, ino: u64, mut inode: rec::Inode) -> MetaResult<()> {
    let now = w.now;
    let a = attr_mut(&mut inode);
    a.nlink = a.nlink.saturating_sub(1);
    a.ctime = Some(now);
    if a.nlink == 0 {
        if is_open(w, ino)? {
            w.orphans.insert(ino, ())?;
        } else {
            return purge(w, ino, &inode);
        }
    }
    w.touch_change(&mut inode);
    w.put_inode(ino, &inode)
}

pub fn unlink(w: &mut W, c: &Caller, parent: u64, name: &[u8]) -> MetaResult<()> {
    c.writable()?;
    let mut dir = w.dir(parent)?;
    let d = w.dentry(parent, name)?.ok_or_else(|| no_entry(parent, name))?;
    if d.kind() == pb::FileKind::Directory {
        return Err(MetaError::fs(
            libc::EISDIR,
            format!("{:?} is a directory; use rmdir", String::from_utf8_lossy(name)),
        ));
    }
    let inode = w.inode(d.ino)?;
    w.remove_dentry(parent, name)?;
    let now = w.now;
    set_times_now(&mut dir, &now, true);
    w.touch_change(&mut dir);
    w.put_inode(parent, &dir)?;
    drop_link(w, d.ino, inode)
}

pub fn rmdir(w: &mut W, c: &Caller, parent: u64, name: &[u8]) -> MetaResult<()> {
    c.writable()?;
    if name == b"." {
        return Err(MetaError::fs(libc::EINVAL, "cannot remove '.'"));
    }
    if name == b".." {
        return Err(MetaError::fs(libc::ENOTEMPTY, "cannot remove '..'"));
    }
    let mut dir = w.dir(parent)?;
    let d = w.dentry(parent, name)?.ok_or_else(|| no_entry(parent, name))?;
    if d.kind() != pb::FileKind::Directory {
        return Err(MetaError::fs(libc::ENOTDIR, format!("{:?} is not a directory", String::from_utf8_lossy(name))));
    }
    if d.ino == c.root {
        return Err(MetaError::fs(libc::EBUSY, "cannot remove the session's root"));
    }
    if !w.dir_is_empty(d.ino)? {
        return Err(MetaError::fs(
            libc::ENOTEMPTY,
            format!("directory {:?} is not empty", String::from_utf8_lossy(name)),
        ));
    }
    let child = w.inode(d.ino)?;
    w.remove_dentry(parent, name)?;
    let now = w.now;
    let a = attr_mut(&mut dir);
    a.nlink = a.nlink.saturating_sub(1);
    set_times_now(&mut dir, &now, true);
    w.touch_change(&mut dir);
    w.put_inode(parent, &dir)?;
    purge(w, d.ino, &child)
}

pub fn link(w: &mut W, c: &Caller, ino: u64, new_parent: u64, new_name: &[u8]) -> MetaResult<rec::Inode> {
    c.writable()?;
    c.check_name(new_name)?;
    let mut inode = w.inode(ino)?;
    if kind_of(&inode) == pb::FileKind::Directory {
        return Err(MetaError::fs(
            libc::EPERM,
            format!("inode {ino} is a directory; directories cannot be hard-linked"),
        ));
    }
    if attr(&inode).nlink == 0 {
        return Err(MetaError::fs(libc::ENOENT, format!("inode {ino} has been unlinked")));
    }
    let mut dir = w.dir(new_parent)?;
    if new_name == b"." || new_name == b".." || w.dentry(new_parent, new_name)?.is_some() {
        return Err(MetaError::fs(
            libc::EEXIST,
            format!("{:?} already exists in directory {new_parent}", String::from_utf8_lossy(new_name)),
        ));
    }
    if inode.quota_root != dir.quota_root {
        return Err(MetaError::fs(libc::EXDEV, "cannot link across quota directories"));
    }
    let now = w.now;
    let kind = kind_of(&inode);
    attr_mut(&mut inode).nlink += 1;
    set_times_now(&mut inode, &now, false);
    w.touch_change(&mut inode);
    w.put_inode(ino, &inode)?;
    w.add_dentry(new_parent, &mut dir, new_name, ino, kind)?;
    set_times_now(&mut dir, &now, true);
    w.touch_change(&mut dir);
    w.put_inode(new_parent, &dir)?;
    Ok(inode)
}

/// Whether `ino` is `ancestor` or lies below it (walking directory parents).
fn is_under(w: &W, ancestor: u64, mut ino: u64) -> MetaResult<bool> {
    for _ in 0..4096 {
        if ino == ancestor {
            return Ok(true);
        }
        if ino == ROOT_INO || ino == 0 {
            return Ok(false);
        }
        ino = w.inode(ino)?.parent;
    }
    Err(MetaError::Internal(format!("directory {ino} is more than 4096 levels deep or in a loop; run fsck")))
}

/// rename(2)/renameat2(2) with RENAME_NOREPLACE and RENAME_EXCHANGE.
pub fn rename(
    w: &mut W,
    c: &Caller,
    parent: u64,
    name: &[u8],
    new_parent: u64,
    new_name: &[u8],
    flags: u32,
) -> MetaResult<()> {
    c.writable()?;
    if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
        || flags & (RENAME_NOREPLACE | RENAME_EXCHANGE) == (RENAME_NOREPLACE | RENAME_EXCHANGE)
    {
        return Err(MetaError::fs(libc::EINVAL, format!("unsupported rename flags {flags:#x}")));
    }
    c.check_name(new_name)?;
    for n in [name, new_name] {
        if n == b"." || n == b".." {
            return Err(MetaError::fs(libc::EBUSY, "cannot rename '.' or '..'"));
        }
    }
    let same_dir = parent == new_parent;
    let mut src_dir = w.dir(parent)?;
    let mut dst_dir = if same_dir { None } else { Some(w.dir(new_parent)?) };
    let sd = w.dentry(parent, name)?.ok_or_else(|| no_entry(parent, name))?;
    if same_dir && name == new_name {
        return Ok(());
    }
    if sd.ino == c.root {
        return Err(MetaError::fs(libc::EBUSY, "cannot rename the session's root"));
    }
    let dst_quota = dst_dir.as_ref().unwrap_or(&src_dir).quota_root;
    if src_dir.quota_root != dst_quota {
        return Err(MetaError::fs(libc::EXDEV, "cannot rename across quota directories"));
    }
    let src_is_dir = sd.kind() == pb::FileKind::Directory;
    if src_is_dir && !same_dir && is_under(w, sd.ino, new_parent)? {
        return Err(MetaError::fs(libc::EINVAL, "cannot move a directory into itself"));
    }
    let td = w.dentry(new_parent, new_name)?;
    let now = w.now;
    let mut si = w.inode(sd.ino)?;

    if flags & RENAME_EXCHANGE != 0 {
        let td = td.ok_or_else(|| no_entry(new_parent, new_name))?;
        if td.ino == c.root {
            return Err(MetaError::fs(libc::EBUSY, "cannot rename the session's root"));
        }
        let dst_is_dir = td.kind() == pb::FileKind::Directory;
        if dst_is_dir && !same_dir && is_under(w, td.ino, parent)? {
            return Err(MetaError::fs(libc::EINVAL, "cannot move a directory into itself"));
        }
        // Each slot keeps its cookie; the inodes swap.
        let slot_src = rec::Dentry { ino: td.ino, kind: td.kind, cookie: sd.cookie };
        let slot_dst = rec::Dentry { ino: sd.ino, kind: sd.kind, cookie: td.cookie };
        w.dentries.insert((parent, name), prost::Message::encode_to_vec(&slot_src).as_slice())?;
        w.dentries.insert((new_parent, new_name), prost::Message::encode_to_vec(&slot_dst).as_slice())?;
        if td.ino != sd.ino {
            let mut ti = w.inode(td.ino)?;
            if !same_dir {
                if src_is_dir || si.parent == parent {
                    si.parent = new_parent;
                }
                if dst_is_dir || ti.parent == new_parent {
                    ti.parent = parent;
                }
                let dst = dst_dir.as_mut().expect("set when the directories differ");
                if src_is_dir && !dst_is_dir {
                    attr_mut(&mut src_dir).nlink -= 1;
                    attr_mut(dst).nlink += 1;
                } else if dst_is_dir && !src_is_dir {
                    attr_mut(dst).nlink -= 1;
                    attr_mut(&mut src_dir).nlink += 1;
                }
            }
            set_times_now(&mut ti, &now, false);
            w.touch_change(&mut ti);
            w.put_inode(td.ino, &ti)?;
        }
    } else {
        if let Some(td) = td {
            if flags & RENAME_NOREPLACE != 0 {
                return Err(MetaError::fs(
                    libc::EEXIST,
                    format!("{:?} exists and RENAME_NOREPLACE was given", String::from_utf8_lossy(new_name)),
                ));
            }
            if td.ino == sd.ino {
                // Two links to one inode: POSIX says rename does nothing.
                return Ok(());
            }
            let ti = w.inode(td.ino)?;
            let dst_is_dir = td.kind() == pb::FileKind::Directory;
            if src_is_dir {
                if !dst_is_dir {
                    return Err(MetaError::fs(libc::ENOTDIR, "cannot replace a non-directory with a directory"));
                }
                if td.ino == c.root {
                    return Err(MetaError::fs(libc::EBUSY, "cannot replace the session's root"));
                }
                if !w.dir_is_empty(td.ino)? {
                    return Err(MetaError::fs(
                        libc::ENOTEMPTY,
                        format!("directory {:?} is not empty", String::from_utf8_lossy(new_name)),
                    ));
                }
            } else if dst_is_dir {
                return Err(MetaError::fs(libc::EISDIR, "cannot replace a directory with a non-directory"));
            }
            w.remove_dentry(new_parent, new_name)?;
            if dst_is_dir {
                let d = dst_dir.as_mut().unwrap_or(&mut src_dir);
                let a = attr_mut(d);
                a.nlink = a.nlink.saturating_sub(1);
                purge(w, td.ino, &ti)?;
            } else {
                drop_link(w, td.ino, ti)?;
            }
        }
        w.remove_dentry(parent, name)?;
        let kind = sd.kind();
        {
            let d = dst_dir.as_mut().unwrap_or(&mut src_dir);
            w.add_dentry(new_parent, d, new_name, sd.ino, kind)?;
        }
        if !same_dir {
            if src_is_dir {
                attr_mut(&mut src_dir).nlink -= 1;
                attr_mut(dst_dir.as_mut().expect("set when the directories differ")).nlink += 1;
            }
            if src_is_dir || si.parent == parent {
                si.parent = new_parent;
            }
        }
    }
    set_times_now(&mut si, &now, false);
    w.touch_change(&mut si);
    w.put_inode(sd.ino, &si)?;
    set_times_now(&mut src_dir, &now, true);
    w.touch_change(&mut src_dir);
    w.put_inode(parent, &src_dir)?;
    if let Some(mut d) = dst_dir {
        set_times_now(&mut d, &now, true);
        w.touch_change(&mut d);
        w.put_inode(new_parent, &d)?;
    }
    Ok(())
}

/// setattr: chmod, chown, truncate, utimes, with the POSIX side effects (ctime, clearing setuid
/// and setgid).
pub fn setattr(w: &mut W, c: &Caller, req: &pb::SetAttrRequest, block_size: u32) -> MetaResult<rec::Inode> {
    c.writable()?;
    let ino = req.ino;
    let mut inode = w.inode(ino)?;
    let now = w.now;
    let kind = kind_of(&inode);
    let mut changed = false;
    if let Some(perm) = req.perm {
        let mut perm = perm & 0o7777;
        let gid = attr(&inode).gid;
        if !c.is_root() && !c.in_group(gid) {
            perm &= !S_ISGID;
        }
        attr_mut(&mut inode).perm = perm;
        // The access ACL follows the mode (a local filesystem's posix_acl_chmod).
        let access = w.xattrs.get((ino, acl::ACCESS))?.map(|v| v.value().to_vec());
        if let Some(value) = access {
            let after = acl::chmod(&value, perm)
                .ok_or_else(|| MetaError::Internal(format!("inode {ino} holds an access ACL that does not parse")))?;
            w.xattrs.insert((ino, acl::ACCESS), after.as_slice())?;
        }
        changed = true;
    }
    if req.uid.is_some() || req.gid.is_some() {
        let a = attr_mut(&mut inode);
        if let Some(uid) = req.uid {
            a.uid = uid;
        }
        if let Some(gid) = req.gid {
            a.gid = gid;
        }
        if kind != pb::FileKind::Directory {
            // chown clears setuid, and setgid when it means "group execute" (not mandatory locking).
            a.perm &= !S_ISUID;
            if a.perm & S_IXGRP != 0 {
                a.perm &= !S_ISGID;
            }
        }
        changed = true;
    }
    if let Some(size) = req.size {
        match kind {
            pb::FileKind::Regular => {}
            pb::FileKind::Directory => {
                return Err(MetaError::fs(libc::EISDIR, format!("inode {ino} is a directory")));
            }
            _ => {
                return Err(MetaError::fs(libc::EINVAL, format!("inode {ino} is not a regular file")));
            }
        }
        crate::server::data::truncate(w, ino, &mut inode, size, block_size)?;
        let a = attr_mut(&mut inode);
        a.mtime = Some(now);
        changed = true;
    }
    if req.atime_now {
        attr_mut(&mut inode).atime = Some(now);
        changed = true;
    } else if let Some(t) = req.atime {
        attr_mut(&mut inode).atime = Some(t);
        changed = true;
    }
    if req.mtime_now {
        attr_mut(&mut inode).mtime = Some(now);
        changed = true;
    } else if let Some(t) = req.mtime {
        attr_mut(&mut inode).mtime = Some(t);
        changed = true;
    }
    if changed {
        attr_mut(&mut inode).ctime = Some(req.ctime.unwrap_or(now));
        w.touch_change(&mut inode);
        w.put_inode(ino, &inode)?;
    } else if let Some(t) = req.ctime {
        attr_mut(&mut inode).ctime = Some(t);
        w.put_inode(ino, &inode)?;
    }
    Ok(inode)
}

pub fn setxattr(w: &mut W, c: &Caller, req: &pb::SetXattrRequest) -> MetaResult<()> {
    c.writable()?;
    let (ino, name, value, flags) = (req.ino, req.name.as_slice(), req.value.as_slice(), req.flags);
    if name.is_empty() || name.len() > MAX_XATTR_NAME {
        return Err(MetaError::fs(libc::ERANGE, format!("xattr name of {} bytes (1..=255 allowed)", name.len())));
    }
    // An encrypted volume's values come sealed: the limit is on the plaintext.
    let max = MAX_XATTR_VALUE + c.seal_overhead();
    if value.len() > max {
        return Err(MetaError::fs(libc::E2BIG, format!("xattr value of {} bytes (at most {max})", value.len())));
    }
    let mut inode = w.inode(ino)?;
    let exists = w.xattrs.get((ino, name))?.is_some();
    if flags & XATTR_CREATE != 0 && exists {
        return Err(MetaError::fs(
            libc::EEXIST,
            format!("xattr {:?} exists (XATTR_CREATE)", String::from_utf8_lossy(name)),
        ));
    }
    if flags & XATTR_REPLACE != 0 && !exists {
        return Err(MetaError::fs(
            libc::ENODATA,
            format!("no xattr {:?} (XATTR_REPLACE)", String::from_utf8_lossy(name)),
        ));
    }
    let acl = (name == acl::ACCESS || name == acl::DEFAULT).then(|| {
        acl::entries(value).ok_or_else(|| {
            MetaError::fs(
                libc::EINVAL,
                format!(
                    "{} is not a POSIX ACL (version 2, with owner, group and other entries)",
                    String::from_utf8_lossy(name)
                ),
            )
        })
    });
    match acl.transpose()? {
        Some(entries) if name == acl::ACCESS => {
            // Setting an access ACL sets the mode's permission bits; one that says no more than a
            // mode is kept as the mode alone (as local filesystems do).
            let a = attr_mut(&mut inode);
            a.perm = (a.perm & !0o777) | acl::mode_bits(&entries);
            if req.acl_kill_sgid {
                a.perm &= !S_ISGID;
            }
            if acl::is_minimal(&entries) {
                w.xattrs.remove((ino, name))?;
            } else {
                w.xattrs.insert((ino, name), value)?;
            }
        }
        _ => {
            w.xattrs.insert((ino, name), value)?;
        }
    }
    let now = w.now;
    set_times_now(&mut inode, &now, false);
    w.touch_change(&mut inode);
    w.put_inode(ino, &inode)
}

pub fn removexattr(w: &mut W, c: &Caller, ino: u64, name: &[u8]) -> MetaResult<()> {
    c.writable()?;
    let mut inode = w.inode(ino)?;
    if w.xattrs.remove((ino, name))?.is_none() {
        return Err(MetaError::fs(libc::ENODATA, format!("no xattr {:?}", String::from_utf8_lossy(name))));
    }
    let now = w.now;
    set_times_now(&mut inode, &now, false);
    w.touch_change(&mut inode);
    w.put_inode(ino, &inode)
}
