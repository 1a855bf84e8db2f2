//! Typed access to a volume database inside one transaction.
//!
//! [`W`] opens every table of a write transaction once and carries the volume counters; the
//! namespace and data operations are written against it. Read-only requests use the generic
//! helpers at the bottom with a read transaction's tables.

use prost::Message;
use redb::{ReadableTable, Table, WriteTransaction};

use crate::server::store::schema::*;
use crate::wire::error::{MetaError, MetaResult};
use crate::wire::{pb, rec};

/// The root directory's inode number (also FUSE's root node id).
pub const ROOT_INO: u64 = 1;
/// Readdir cookies 1 and 2 are `.` and `..`; entries get cookies from here on.
pub const FIRST_COOKIE: u64 = 3;

pub fn now() -> pb::Timespec {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    pb::Timespec { sec: d.as_secs() as i64, nsec: d.subsec_nanos() }
}

pub fn ts_nanos(t: &pb::Timespec) -> i64 {
    t.sec.saturating_mul(1_000_000_000).saturating_add(t.nsec as i64)
}

/// The attributes of an inode record (always present in records this server writes).
pub fn attr(inode: &rec::Inode) -> &pb::Attr {
    static EMPTY: std::sync::OnceLock<pb::Attr> = std::sync::OnceLock::new();
    inode.attr.as_ref().unwrap_or_else(|| EMPTY.get_or_init(pb::Attr::default))
}

pub fn attr_mut(inode: &mut rec::Inode) -> &mut pb::Attr {
    inode.attr.get_or_insert_with(Default::default)
}

pub fn kind_of(inode: &rec::Inode) -> pb::FileKind {
    attr(inode).kind()
}

pub fn no_entry(parent: u64, name: &[u8]) -> MetaError {
    MetaError::fs(libc::ENOENT, format!("no entry {:?} in directory {parent}", String::from_utf8_lossy(name)))
}

pub fn no_inode(ino: u64) -> MetaError {
    MetaError::fs(libc::ENOENT, format!("inode {ino} does not exist (deleted?)"))
}

/// A write transaction with every volume table open.
pub struct W<'t> {
    pub inodes: Table<'t, u64, &'static [u8]>,
    pub dentries: Table<'t, (u64, &'static [u8]), &'static [u8]>,
    pub cookies: Table<'t, (u64, u64), &'static [u8]>,
    pub xattrs: Table<'t, (u64, &'static [u8]), &'static [u8]>,
    pub blocks: Table<'t, (u64, u64), &'static [u8]>,
    pub uploads: Table<'t, u64, i64>,
    pub gc: Table<'t, (i64, u64), u32>,
    pub shared_refs: Table<'t, u64, u32>,
    pub quotas: Table<'t, u64, &'static [u8]>,
    pub tokens: Table<'t, &'static [u8], &'static [u8]>,
    pub sessions: Table<'t, &'static [u8], &'static [u8]>,
    pub open_files: Table<'t, u64, &'static [u8]>,
    pub open_by_ino: Table<'t, (u64, u64), ()>,
    pub orphans: Table<'t, u64, ()>,
    pub locks: Table<'t, u64, &'static [u8]>,
    pub replies: Table<'t, &'static [u8], &'static [u8]>,
    pub meta: Table<'t, &'static str, &'static [u8]>,
    pub counters: rec::Counters,
    counters_at_start: rec::Counters,
    pub now: pb::Timespec,
}

impl<'t> W<'t> {
    pub fn open(txn: &'t WriteTransaction) -> MetaResult<W<'t>> {
        let meta = txn.open_table(META)?;
        let counters: rec::Counters = match meta.get("counters")? {
            Some(v) => dec(v.value())?,
            None => rec::Counters::default(),
        };
        Ok(W {
            inodes: txn.open_table(INODES)?,
            dentries: txn.open_table(DENTRIES)?,
            cookies: txn.open_table(DIR_COOKIES)?,
            xattrs: txn.open_table(XATTRS)?,
            blocks: txn.open_table(BLOCKS)?,
            uploads: txn.open_table(UPLOADS)?,
            gc: txn.open_table(GC_PENDING)?,
            shared_refs: txn.open_table(SHARED_REFS)?,
            quotas: txn.open_table(QUOTAS)?,
            tokens: txn.open_table(TOKENS)?,
            sessions: txn.open_table(SESSIONS)?,
            open_files: txn.open_table(OPEN_FILES)?,
            open_by_ino: txn.open_table(OPEN_BY_INO)?,
            orphans: txn.open_table(ORPHANS)?,
            locks: txn.open_table(LOCKS)?,
            replies: txn.open_table(REPLIES)?,
            meta,
            counters_at_start: counters,
            counters,
            now: now(),
        })
    }

    /// Writes the counters back if they changed. Call last, before the transaction commits.
    pub fn finish(mut self) -> MetaResult<()> {
        if self.counters != self.counters_at_start {
            let bytes = self.counters.encode_to_vec();
            self.meta.insert("counters", bytes.as_slice())?;
        }
        Ok(())
    }

    pub fn inode_opt(&self, ino: u64) -> MetaResult<Option<rec::Inode>> {
        inode_in(&self.inodes, ino)
    }

    /// The inode, or ENOENT.
    pub fn inode(&self, ino: u64) -> MetaResult<rec::Inode> {
        self.inode_opt(ino)?.ok_or_else(|| no_inode(ino))
    }

    /// The inode, which must be a directory (ENOTDIR otherwise).
    pub fn dir(&self, ino: u64) -> MetaResult<rec::Inode> {
        let inode = self.inode(ino)?;
        if kind_of(&inode) != pb::FileKind::Directory {
            return Err(MetaError::fs(libc::ENOTDIR, format!("inode {ino} is not a directory")));
        }
        Ok(inode)
    }

    pub fn put_inode(&mut self, ino: u64, inode: &rec::Inode) -> MetaResult<()> {
        let bytes = inode.encode_to_vec();
        self.inodes.insert(ino, bytes.as_slice())?;
        Ok(())
    }

    pub fn dentry(&self, parent: u64, name: &[u8]) -> MetaResult<Option<rec::Dentry>> {
        dentry_in(&self.dentries, parent, name)
    }

    /// Adds `name` → `ino` to directory `dir` (whose record the caller holds and saves).
    pub fn add_dentry(
        &mut self,
        dir_ino: u64,
        dir: &mut rec::Inode,
        name: &[u8],
        ino: u64,
        kind: pb::FileKind,
    ) -> MetaResult<()> {
        let cookie = dir.next_cookie.max(FIRST_COOKIE);
        dir.next_cookie = cookie + 1;
        let d = rec::Dentry { ino, kind: kind as i32, cookie };
        self.dentries.insert((dir_ino, name), d.encode_to_vec().as_slice())?;
        self.cookies.insert((dir_ino, cookie), name)?;
        Ok(())
    }

    pub fn remove_dentry(&mut self, dir_ino: u64, name: &[u8]) -> MetaResult<Option<rec::Dentry>> {
        let Some(d) = self.dentries.remove((dir_ino, name))?.map(|v| dec::<rec::Dentry>(v.value())).transpose()? else {
            return Ok(None);
        };
        self.cookies.remove((dir_ino, d.cookie))?;
        Ok(Some(d))
    }

    pub fn dir_is_empty(&self, ino: u64) -> MetaResult<bool> {
        Ok(self.cookies.range((ino, 0)..=(ino, u64::MAX))?.next().is_none())
    }

    pub fn quota(&self, dir: u64) -> MetaResult<Option<rec::QuotaDir>> {
        match self.quotas.get(dir)? {
            Some(v) => Ok(Some(dec(v.value())?)),
            None => Ok(None),
        }
    }

    pub fn put_quota(&mut self, dir: u64, q: &rec::QuotaDir) -> MetaResult<()> {
        self.quotas.insert(dir, q.encode_to_vec().as_slice())?;
        Ok(())
    }

    pub fn next_ino(&mut self) -> u64 {
        let ino = self.counters.next_ino.max(ROOT_INO + 1);
        self.counters.next_ino = ino + 1;
        ino
    }

    pub fn next_version(&mut self) -> u64 {
        let v = self.counters.next_version.max(1);
        self.counters.next_version = v + 1;
        v
    }

    /// Bumps an inode's change counter (close-to-open revalidation compares it).
    pub fn touch_change(&mut self, inode: &mut rec::Inode) {
        let v = self.next_version();
        attr_mut(inode).change = v;
    }
}

/// Reads an inode from any inode table.
pub fn inode_in(t: &impl ReadableTable<u64, &'static [u8]>, ino: u64) -> MetaResult<Option<rec::Inode>> {
    match t.get(ino)? {
        Some(v) => Ok(Some(dec(v.value())?)),
        None => Ok(None),
    }
}

/// Reads a directory entry from any dentry table.
pub fn dentry_in(
    t: &impl ReadableTable<(u64, &'static [u8]), &'static [u8]>,
    parent: u64,
    name: &[u8],
) -> MetaResult<Option<rec::Dentry>> {
    match t.get((parent, name))? {
        Some(v) => Ok(Some(dec(v.value())?)),
        None => Ok(None),
    }
}

/// Whether `ino` lies inside the subtree rooted at `root`: walks the parent links up.
/// Non-directories are judged by the directory they were first linked in.
pub fn within(t: &impl ReadableTable<u64, &'static [u8]>, root: u64, mut ino: u64) -> MetaResult<bool> {
    if root == ROOT_INO {
        return Ok(true);
    }
    for _ in 0..4096 {
        if ino == root {
            return Ok(true);
        }
        if ino == ROOT_INO || ino == 0 {
            return Ok(false);
        }
        match inode_in(t, ino)? {
            Some(i) => ino = i.parent,
            None => return Ok(false),
        }
    }
    Ok(false)
}
