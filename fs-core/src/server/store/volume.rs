//! One volume's metadata database and the operations a session performs on it.
//!
//! Reads run in the caller's task on a redb read transaction (they see every change already
//! answered); changes go through the volume's [`Writer`]. Every operation first checks that the
//! inodes it names lie inside the caller's subtree.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use prost::Message;
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable};

use crate::server::access::Caller;
use crate::server::data;
use crate::server::deleg::{self, Delegations};
use crate::server::locks::{Lock, LockTable};
use crate::server::ns::{self, NewNode};
use crate::server::quota::{self, Reservations};
use crate::server::store::replay::{self, Replay};
use crate::server::store::schema::{self, *};
use crate::server::store::tx::*;
use crate::server::store::writer::Writer;
use crate::wire::error::{MetaError, MetaResult};
use crate::wire::{pb, rec};

/// The smallest, largest and default block sizes.
pub const MIN_BLOCK_SIZE: u32 = 256 * 1024;
pub const MAX_BLOCK_SIZE: u32 = 8 * 1024 * 1024;

/// Checks a block size: a power of two from 256 KiB to 8 MiB.
pub fn check_block_size(bs: u32) -> MetaResult<()> {
    if !bs.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs) {
        return Err(MetaError::fs(
            libc::EINVAL,
            format!("block size {bs} is not a power of two between 262144 (256 KiB) and 8388608 (8 MiB)"),
        ));
    }
    Ok(())
}

pub struct VolumeDb {
    pub uuid: String,
    pub path: PathBuf,
    db: Arc<Database>,
    pub writer: Writer,
    info: RwLock<pb::VolumeInfo>,
    pub locks: LockTable,
    /// Quota held for unflushed writes (in memory).
    pub reservations: Arc<Reservations>,
    /// Directories delegated to sessions (in memory).
    pub delegations: Arc<Delegations>,
}

fn mode_of(kind: pb::FileKind) -> MetaResult<()> {
    match kind {
        pb::FileKind::Unspecified => Err(MetaError::fs(libc::EINVAL, "file kind unspecified")),
        _ => Ok(()),
    }
}

impl VolumeDb {
    /// Creates a new volume database at `path` with its root directory.
    pub fn create_db(path: &Path, info: pb::VolumeInfo, sync_all: bool) -> MetaResult<Arc<VolumeDb>> {
        check_block_size(info.block_size)?;
        if path.exists() {
            return Err(MetaError::fs(libc::EEXIST, format!("{} already exists", path.display())));
        }
        let db = schema::open_database(path)?;
        let txn = db.begin_write()?;
        schema::init_version(&txn, "volume")?;
        {
            let mut w = W::open(&txn)?;
            let now = w.now;
            let mut root = rec::Inode {
                attr: Some(pb::Attr {
                    ino: ROOT_INO,
                    kind: pb::FileKind::Directory as i32,
                    perm: 0o755,
                    nlink: 2,
                    atime: Some(now),
                    mtime: Some(now),
                    ctime: Some(now),
                    ..Default::default()
                }),
                parent: ROOT_INO,
                next_cookie: FIRST_COOKIE,
                ..Default::default()
            };
            w.touch_change(&mut root);
            w.put_inode(ROOT_INO, &root)?;
            w.counters.next_ino = ROOT_INO + 1;
            w.counters.used_inodes = 1;
            w.counters.quota = info.quota;
            w.meta.insert("volume", info.encode_to_vec().as_slice())?;
            w.finish()?;
        }
        txn.commit()?;
        Self::start(db, path, info, sync_all)
    }

    /// Opens an existing volume database (refusing one of an unknown schema).
    pub fn open_db(path: &Path, sync_all: bool) -> MetaResult<Arc<VolumeDb>> {
        let db = schema::open_database(path)?;
        schema::check_version(&db, path, "volume")?;
        let info: pb::VolumeInfo = {
            let r = db.begin_read()?;
            let t = r.open_table(META)?;
            let v = t
                .get("volume")?
                .ok_or_else(|| MetaError::Internal(format!("{} has no volume record", path.display())))?;
            schema::dec(v.value())?
        };
        Self::start(db, path, info, sync_all)
    }

    fn start(db: Database, path: &Path, info: pb::VolumeInfo, sync_all: bool) -> MetaResult<Arc<VolumeDb>> {
        let db = Arc::new(db);
        let locks = LockTable::default();
        {
            let r = db.begin_read()?;
            let t = r.open_table(LOCKS)?;
            for item in t.iter()? {
                let (k, v) = item?;
                let list: rec::LockList = schema::dec(v.value())?;
                locks.restore(k.value(), list.locks.iter().filter_map(Lock::from_rec).collect());
            }
        }
        let writer = Writer::start(db.clone(), &info.name, sync_all);
        Ok(Arc::new(VolumeDb {
            uuid: info.uuid.clone(),
            path: path.to_path_buf(),
            db,
            writer,
            info: RwLock::new(info),
            locks,
            reservations: Default::default(),
            delegations: Default::default(),
        }))
    }

    pub fn info(&self) -> pb::VolumeInfo {
        self.info.read().clone()
    }

    /// Whether a byte quota (the volume's or a directory's) applies to `inode`.
    pub fn quota_limited(&self, inode: &rec::Inode) -> bool {
        inode.quota_root != 0 || self.info.read().quota.is_some_and(|q| q.max_bytes > 0)
    }

    /// Whether names are ciphertext (the volume has an encryption envelope).
    pub fn encrypted(&self) -> bool {
        self.info.read().encryption.is_some()
    }

    pub fn block_size(&self) -> u32 {
        self.info.read().block_size
    }

    pub fn read(&self) -> MetaResult<ReadTransaction> {
        Ok(self.db.begin_read()?)
    }

    /// Bytes the database file takes on disk.
    pub fn file_size(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    /// Runs `f` against the volume's tables in one write transaction (see [`Writer::write`]).
    pub async fn change<R, F>(&self, durable: bool, f: F) -> MetaResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut W) -> MetaResult<R> + Send + 'static,
    {
        self.writer
            .write(durable, move |txn| {
                let mut w = W::open(txn)?;
                let r = f(&mut w)?;
                w.finish()?;
                Ok(r)
            })
            .await
    }

    /// Replaces the volume record (retention, quota, backend, envelope).
    pub async fn update_info(&self, info: pb::VolumeInfo) -> MetaResult<()> {
        let rec = info.clone();
        self.change(true, move |w| {
            w.counters.quota = rec.quota;
            w.meta.insert("volume", rec.encode_to_vec().as_slice())?;
            Ok(())
        })
        .await?;
        *self.info.write() = info;
        Ok(())
    }

    // --- subtree checks ---------------------------------------------------------------------------

    fn check_within(t: &impl ReadableTable<u64, &'static [u8]>, c: &Caller, inos: &[u64]) -> MetaResult<()> {
        for &ino in inos {
            if !within(t, c.root, ino)? {
                return Err(MetaError::fs(
                    libc::EACCES,
                    format!("inode {ino} is outside this session's subtree (root {})", c.root),
                ));
            }
        }
        Ok(())
    }

    /// Runs a change after checking, inside the same transaction, that `inos` lie in the subtree
    /// and that none is delegated to another session (recalling it and running again if one is).
    ///
    /// A request made under a number ([`replay`]) that was applied before is answered with its
    /// kept result instead; one applied now keeps its result in the same transaction.
    async fn change_in<R, F>(&self, c: &Caller, inos: Vec<u64>, durable: bool, f: F) -> MetaResult<R>
    where
        R: Replay + Send + 'static,
        F: FnOnce(&mut W, &Caller) -> MetaResult<R> + Clone + Send + 'static,
    {
        loop {
            if let Some(dir) = self.delegations.conflict(c, &inos) {
                self.delegations.recall(dir).await;
            }
            let (c2, inos2, f2, delegations) = (c.clone(), inos.clone(), f.clone(), self.delegations.clone());
            let r = self
                .change(durable, move |w| {
                    if let Some(r) = replay::replayed(w, &c2)? {
                        return Ok(r);
                    }
                    Self::check_within(&w.inodes, &c2, &inos2)?;
                    delegations.check(&c2, &inos2)?;
                    let r = f2(w, &c2)?;
                    replay::keep(w, &c2, &r)?;
                    Ok(r)
                })
                .await;
            match r {
                Err(MetaError::Delegated(dir)) => self.delegations.recall(dir).await,
                r => return r,
            }
        }
    }

    fn read_in(&self, c: &Caller, inos: &[u64]) -> MetaResult<ReadTransaction> {
        let r = self.read()?;
        Self::check_within(&r.open_table(INODES)?, c, inos)?;
        self.delegations.check(c, inos)?;
        Ok(r)
    }

    /// Runs a read, recalling a delegation it meets and reading again (reads that name a
    /// directory: another session's delegation may hold changes the server has not seen).
    pub async fn settled<T>(&self, mut f: impl FnMut() -> MetaResult<T>) -> MetaResult<T> {
        loop {
            match f() {
                Err(MetaError::Delegated(dir)) => self.delegations.recall(dir).await,
                r => return r,
            }
        }
    }

    // --- reads ------------------------------------------------------------------------------------

    pub fn getattr(&self, c: &Caller, ino: u64) -> MetaResult<rec::Inode> {
        let r = self.read_in(c, &[ino])?;
        inode_in(&r.open_table(INODES)?, ino)?.ok_or_else(|| no_inode(ino))
    }

    /// Resolves `name` in `parent`; `..` of the session's root is the root itself.
    pub fn lookup(&self, c: &Caller, parent: u64, name: &[u8]) -> MetaResult<(u64, rec::Inode)> {
        let r = self.read_in(c, &[parent])?;
        let inodes = r.open_table(INODES)?;
        let dir = inode_in(&inodes, parent)?.ok_or_else(|| no_inode(parent))?;
        if kind_of(&dir) != pb::FileKind::Directory {
            return Err(MetaError::fs(libc::ENOTDIR, format!("inode {parent} is not a directory")));
        }
        let ino = match name {
            b"." => parent,
            b".." if parent == c.root => parent,
            b".." => dir.parent,
            _ => dentry_in(&r.open_table(DENTRIES)?, parent, name)?.ok_or_else(|| no_entry(parent, name))?.ino,
        };
        let inode = inode_in(&inodes, ino)?.ok_or_else(|| no_inode(ino))?;
        Ok((ino, inode))
    }

    pub fn readlink(&self, c: &Caller, ino: u64) -> MetaResult<Vec<u8>> {
        let inode = self.getattr(c, ino)?;
        if kind_of(&inode) != pb::FileKind::Symlink {
            return Err(MetaError::fs(libc::EINVAL, format!("inode {ino} is not a symlink")));
        }
        Ok(inode.symlink_target)
    }

    /// Entries after `cookie` (0: from the start, including `.` and `..` as cookies 1 and 2).
    pub fn readdir(
        &self,
        c: &Caller,
        ino: u64,
        cookie: u64,
        limit: u32,
        plus: bool,
    ) -> MetaResult<(Vec<pb::DirEntry>, bool)> {
        let r = self.read_in(c, &[ino])?;
        let inodes = r.open_table(INODES)?;
        let dir = inode_in(&inodes, ino)?.ok_or_else(|| no_inode(ino))?;
        if kind_of(&dir) != pb::FileKind::Directory {
            return Err(MetaError::fs(libc::ENOTDIR, format!("inode {ino} is not a directory")));
        }
        let limit = limit.clamp(1, 4096) as usize;
        let mut out = Vec::new();
        let attr_of = |i: u64| -> MetaResult<Option<pb::Attr>> {
            Ok(match plus {
                true => inode_in(&inodes, i)?.map(|n| *attr(&n)),
                false => None,
            })
        };
        let parent = if ino == c.root { ino } else { dir.parent };
        for (ck, name, i) in [(1u64, &b"."[..], ino), (2, &b".."[..], parent)] {
            if cookie < ck && out.len() < limit {
                out.push(pb::DirEntry {
                    name: name.to_vec(),
                    ino: i,
                    kind: pb::FileKind::Directory as i32,
                    cookie: ck,
                    attr: attr_of(i)?,
                });
            }
        }
        let cookies = r.open_table(DIR_COOKIES)?;
        let dentries = r.open_table(DENTRIES)?;
        let mut eof = true;
        for item in cookies.range((ino, cookie.max(2) + 1)..=(ino, u64::MAX))? {
            if out.len() >= limit {
                eof = false;
                break;
            }
            let (k, name) = item?;
            let name = name.value();
            let Some(d) = dentry_in(&dentries, ino, name)? else {
                continue;
            };
            out.push(pb::DirEntry {
                name: name.to_vec(),
                ino: d.ino,
                kind: d.kind,
                cookie: k.value().1,
                attr: attr_of(d.ino)?,
            });
        }
        Ok((out, eof))
    }

    pub fn getxattr(&self, c: &Caller, ino: u64, name: &[u8]) -> MetaResult<Vec<u8>> {
        let r = self.read_in(c, &[ino])?;
        if inode_in(&r.open_table(INODES)?, ino)?.is_none() {
            return Err(no_inode(ino));
        }
        let t = r.open_table(XATTRS)?;
        let v = t.get((ino, name))?;
        v.map(|v| v.value().to_vec()).ok_or_else(|| {
            MetaError::fs(libc::ENODATA, format!("no xattr {:?} on inode {ino}", String::from_utf8_lossy(name)))
        })
    }

    pub fn listxattr(&self, c: &Caller, ino: u64) -> MetaResult<Vec<Vec<u8>>> {
        let r = self.read_in(c, &[ino])?;
        if inode_in(&r.open_table(INODES)?, ino)?.is_none() {
            return Err(no_inode(ino));
        }
        let t = r.open_table(XATTRS)?;
        let mut names = Vec::new();
        for item in t.range((ino, &[][..])..)? {
            let (k, _) = item?;
            let (i, n) = k.value();
            if i != ino {
                break;
            }
            names.push(n.to_vec());
        }
        Ok(names)
    }

    pub fn get_blocks(
        &self,
        c: &Caller,
        ino: u64,
        first: u64,
        count: u64,
    ) -> MetaResult<(Vec<pb::BlockRef>, rec::Inode)> {
        let r = self.read_in(c, &[ino])?;
        let inode = inode_in(&r.open_table(INODES)?, ino)?.ok_or_else(|| no_inode(ino))?;
        let t = r.open_table(BLOCKS)?;
        let last = if count == 0 { u64::MAX } else { first.saturating_add(count - 1) };
        let mut out = Vec::new();
        for item in t.range((ino, first)..=(ino, last))? {
            let (k, v) = item?;
            let b: rec::Block = schema::dec(v.value())?;
            out.push(pb::BlockRef {
                index: k.value().1,
                id: b.id,
                len: b.len,
                version: b.version,
                stored_len: b.stored_len,
                checksum: b.checksum,
                compression: b.compression,
                chunk_size: b.chunk_size,
                chunks: b.chunks,
                shared: b.shared,
            });
        }
        Ok((out, inode))
    }

    /// statfs: inside a quota directory the quota is the size; otherwise the volume's quota, or a
    /// large nominal size when the volume has none.
    pub fn statfs(&self, c: &Caller, ino: u64) -> MetaResult<pb::StatFsReply> {
        const NOMINAL: u64 = 1 << 50;
        let r = self.read_in(c, &[ino])?;
        let inode = inode_in(&r.open_table(INODES)?, ino)?.ok_or_else(|| no_inode(ino))?;
        let counters: rec::Counters = match r.open_table(META)?.get("counters")? {
            Some(v) => schema::dec(v.value())?,
            None => Default::default(),
        };
        let (mut total_b, mut used_b, mut total_i, mut used_i) = (0, counters.used_bytes, 0, counters.used_inodes);
        let vq = counters.quota.unwrap_or_default();
        if vq.max_bytes > 0 {
            total_b = vq.max_bytes;
        }
        if vq.max_inodes > 0 {
            total_i = vq.max_inodes;
        }
        if inode.quota_root != 0
            && let Some(v) = r.open_table(QUOTAS)?.get(inode.quota_root)?
        {
            let qd: rec::QuotaDir = schema::dec(v.value())?;
            let q = qd.quota.unwrap_or_default();
            if q.max_bytes > 0 {
                (total_b, used_b) = (q.max_bytes, qd.used_bytes);
            }
            if q.max_inodes > 0 {
                (total_i, used_i) = (q.max_inodes, qd.used_inodes);
            }
        }
        Ok(pb::StatFsReply {
            total_bytes: if total_b == 0 { NOMINAL.max(used_b) } else { total_b },
            used_bytes: used_b,
            total_inodes: if total_i == 0 { NOMINAL.max(used_i) } else { total_i },
            used_inodes: used_i,
            block_size: self.block_size(),
            max_name_len: 255,
        })
    }

    // --- changes ----------------------------------------------------------------------------------

    pub async fn mknod(&self, c: &Caller, req: pb::MkNodRequest) -> MetaResult<(u64, rec::Inode)> {
        let kind = req.kind();
        mode_of(kind)?;
        if kind == pb::FileKind::Symlink {
            return Err(MetaError::fs(libc::EINVAL, "create symlinks with Symlink"));
        }
        self.change_in(c, vec![req.parent], false, move |w, c| {
            ns::mknod(
                w,
                c,
                req.parent,
                &req.name,
                NewNode {
                    kind,
                    perm: req.perm,
                    umask: req.umask,
                    rdev: req.rdev,
                    symlink_target: None,
                    ino: None,
                    time: None,
                },
            )
        })
        .await
    }

    pub async fn symlink(
        &self,
        c: &Caller,
        parent: u64,
        name: Vec<u8>,
        target: Vec<u8>,
    ) -> MetaResult<(u64, rec::Inode)> {
        // An encrypted volume's targets come sealed: the limits are on the plaintext.
        let overhead = c.seal_overhead();
        if target.len() <= overhead || target.len() > ns::MAX_SYMLINK + overhead {
            return Err(MetaError::fs(
                if target.len() <= overhead { libc::ENOENT } else { libc::ENAMETOOLONG },
                format!("symlink target of {} bytes (1..={} allowed)", target.len(), ns::MAX_SYMLINK + overhead),
            ));
        }
        self.change_in(c, vec![parent], false, move |w, c| {
            ns::mknod(
                w,
                c,
                parent,
                &name,
                NewNode {
                    kind: pb::FileKind::Symlink,
                    perm: 0o777,
                    umask: 0,
                    rdev: 0,
                    symlink_target: Some(&target),
                    ino: None,
                    time: None,
                },
            )
        })
        .await
    }

    pub async fn unlink(&self, c: &Caller, parent: u64, name: Vec<u8>) -> MetaResult<()> {
        self.change_in(c, vec![parent], false, move |w, c| ns::unlink(w, c, parent, &name)).await
    }

    pub async fn rmdir(&self, c: &Caller, parent: u64, name: Vec<u8>) -> MetaResult<()> {
        // The directory removed may be delegated (creates the server has not seen yet).
        let inos = self.with_entries(vec![parent], &[(parent, &name)])?;
        self.change_in(c, inos, false, move |w, c| ns::rmdir(w, c, parent, &name)).await
    }

    /// `inos` and the inodes the names (directory, name) point at now.
    fn with_entries(&self, mut inos: Vec<u64>, names: &[(u64, &[u8])]) -> MetaResult<Vec<u64>> {
        let r = self.read()?;
        let t = r.open_table(DENTRIES)?;
        for &(dir, name) in names {
            if let Some(d) = dentry_in(&t, dir, name)? {
                inos.push(d.ino);
            }
        }
        Ok(inos)
    }

    pub async fn link(&self, c: &Caller, ino: u64, new_parent: u64, new_name: Vec<u8>) -> MetaResult<rec::Inode> {
        self.change_in(c, vec![ino, new_parent], false, move |w, c| ns::link(w, c, ino, new_parent, &new_name)).await
    }

    pub async fn rename(&self, c: &Caller, req: pb::RenameRequest) -> MetaResult<()> {
        // A directory replaced may be delegated (creates the server has not seen yet).
        let inos = self.with_entries(vec![req.parent, req.new_parent], &[(req.new_parent, &req.new_name)])?;
        self.change_in(c, inos, false, move |w, c| {
            ns::rename(w, c, req.parent, &req.name, req.new_parent, &req.new_name, req.flags)
        })
        .await
    }

    pub async fn setattr(&self, c: &Caller, req: pb::SetAttrRequest) -> MetaResult<rec::Inode> {
        let bs = self.block_size();
        self.change_in(c, vec![req.ino], false, move |w, c| ns::setattr(w, c, &req, bs)).await
    }

    pub async fn setxattr(&self, c: &Caller, req: pb::SetXattrRequest) -> MetaResult<()> {
        self.change_in(c, vec![req.ino], false, move |w, c| ns::setxattr(w, c, &req)).await
    }

    pub async fn removexattr(&self, c: &Caller, ino: u64, name: Vec<u8>) -> MetaResult<()> {
        self.change_in(c, vec![ino], false, move |w, c| ns::removexattr(w, c, ino, &name)).await
    }

    /// Grants the caller's session a delegation on directory `dir` (docs/write-back-metadata.md).
    /// Refused (EBUSY, EPERM) where the holder could not answer as the server would: another
    /// session holds it, the token is read-only or squashes root, names are encrypted, a quota
    /// applies, the directory has a default ACL or more than [`deleg::MAX_NAMES`] names.
    pub async fn delegate(&self, c: &Caller, dir: u64, events: deleg::Events) -> MetaResult<pb::DelegateReply> {
        c.writable()?;
        let refuse =
            move |why: &str| Err(MetaError::fs(libc::EPERM, format!("directory {dir} is not delegated: {why}")));
        if c.root_squash {
            return refuse("the token squashes root");
        }
        if self.encrypted() {
            return refuse("the volume's names are encrypted");
        }
        if self.info.read().quota.is_some_and(|q| q.max_bytes > 0 || q.max_inodes > 0) {
            return refuse("the volume has a quota");
        }
        let (c, delegations) = (c.clone(), self.delegations.clone());
        self.change(false, move |w| {
            Self::check_within(&w.inodes, &c, &[dir])?;
            let inode = w.dir(dir)?;
            if attr(&inode).nlink == 0 {
                return Err(MetaError::fs(libc::ENOENT, format!("directory {dir} has been removed")));
            }
            if inode.quota_root != 0 {
                return refuse("a directory quota applies to it");
            }
            if w.xattrs.get((dir, crate::server::acl::DEFAULT))?.is_some() {
                return refuse("it has a default ACL");
            }
            let mut names = Vec::new();
            for item in w.dentries.range((dir, &[][..])..)? {
                let (k, _) = item?;
                let (d, name) = k.value();
                if d != dir {
                    break;
                }
                if names.len() == deleg::MAX_NAMES {
                    return refuse("it has too many names");
                }
                names.push(name.to_vec());
            }
            let ino_start = w.counters.next_ino.max(ROOT_INO + 1);
            w.counters.next_ino = ino_start + deleg::RESERVED;
            let open_start = w.counters.next_open_id.max(1);
            w.counters.next_open_id = open_start + deleg::RESERVED;
            let (inos, opens) = (ino_start..ino_start + deleg::RESERVED, open_start..open_start + deleg::RESERVED);
            let epoch = delegations.grant(&c, dir, inos, opens, events)?;
            Ok(pb::DelegateReply {
                epoch,
                dir: Some(*attr(&inode)),
                names,
                ino_start,
                ino_end: ino_start + deleg::RESERVED,
                open_start,
                open_end: open_start + deleg::RESERVED,
            })
        })
        .await
    }

    /// Applies a delegation holder's creates in one transaction (each checked as Create with
    /// O_EXCL would be, its inode number and open ids within the ranges reserved to the holder),
    /// then ends the delegation if asked. `creators` are the callers of `req.creates`, in order.
    pub async fn apply(&self, c: &Caller, creators: Vec<Caller>, req: pb::ApplyRequest) -> MetaResult<pb::ApplyReply> {
        let (dir, epoch, give_back) = (req.dir, req.epoch, req.give_back);
        let bs = self.block_size();
        let (c2, delegations) = (c.clone(), self.delegations.clone());
        let reply = self
            .change(req.durable, move |w| {
                let c = c2;
                Self::check_within(&w.inodes, &c, &[dir])?;
                let (inos, opens) = delegations.ranges(&c, dir, epoch)?;
                let mut attrs = Vec::with_capacity(req.creates.len());
                for (oc, op) in creators.iter().zip(&req.creates) {
                    if !inos.contains(&op.ino) || w.inodes.get(op.ino)?.is_some() {
                        return Err(MetaError::Protocol(format!(
                            "inode {} is not one reserved to this delegation, or is taken",
                            op.ino
                        )));
                    }
                    let node = NewNode {
                        kind: pb::FileKind::Regular,
                        perm: op.perm,
                        umask: 0,
                        rdev: 0,
                        symlink_target: None,
                        ino: Some(op.ino),
                        time: op.time,
                    };
                    let (ino, mut inode) = ns::mknod(w, oc, dir, &op.name, node)?;
                    for (&id, &flags) in op.open_ids.iter().zip(&op.open_flags) {
                        if !opens.contains(&id) || w.open_files.get(id)?.is_some() {
                            return Err(MetaError::Protocol(format!(
                                "open id {id} is not one reserved to this delegation, or is taken"
                            )));
                        }
                        inode = data::open_as(w, oc, ino, flags & !(libc::O_TRUNC as u32), bs, Some(id))?.1;
                    }
                    attrs.push(*attr(&inode));
                }
                let dir_attr = w.dir(dir).ok().map(|i| *attr(&i));
                Ok(pb::ApplyReply { attrs, dir: dir_attr })
            })
            .await?;
        if give_back {
            self.delegations.give_back(c, dir, epoch);
        }
        Ok(reply)
    }

    pub async fn create_file(&self, c: &Caller, req: pb::MkNodRequest) -> MetaResult<data::Created> {
        let bs = self.block_size();
        self.change_in(c, vec![req.parent], false, move |w, c| data::create(w, c, &req, bs)).await
    }

    pub async fn open_file(&self, c: &Caller, ino: u64, flags: u32) -> MetaResult<(u64, rec::Inode)> {
        let bs = self.block_size();
        self.change_in(c, vec![ino], false, move |w, c| data::open(w, c, ino, flags, bs)).await
    }

    /// Closes an open file: drops the locks of `lock_owners` (POSIX) and the handle's flock, then
    /// forgets the open (deleting an unlinked inode at its last close).
    pub async fn release(&self, c: &Caller, open_id: u64, lock_owners: Vec<u64>) -> MetaResult<()> {
        let session = c.session;
        let ino = {
            let r = self.read()?;
            let t = r.open_table(OPEN_FILES)?;
            let of: Option<rec::OpenFile> = match t.get(open_id)? {
                Some(v) => Some(schema::dec(v.value())?),
                None => None,
            };
            match of {
                Some(of) if of.session == session => of.ino,
                Some(_) => {
                    return Err(MetaError::fs(libc::EBADF, format!("open file {open_id} belongs to another session")));
                }
                None => return Ok(()),
            }
        };
        self.drop_locks(ino, |l| {
            l.session == session
                && ((l.kind == pb::LockKind::Posix && lock_owners.contains(&l.owner))
                    || (l.kind == pb::LockKind::Flock && l.open_id == open_id))
        });
        self.change(false, move |w| data::release(w, open_id).map(drop)).await
    }

    /// Drops matching locks of `ino`, persisting the inode's new list in order.
    pub fn drop_locks(&self, ino: u64, pred: impl Fn(&Lock) -> bool) {
        let writer = self.writer.clone();
        self.locks.release_where(ino, pred, &mut |ino, list| persist_locks(&writer, ino, list));
    }

    pub async fn allocate_blocks(&self, c: &Caller, count: u32) -> MetaResult<Vec<u64>> {
        let c = c.clone();
        self.change(false, move |w| data::allocate_blocks(w, &c, count)).await
    }

    pub async fn commit_blocks(
        &self,
        c: &Caller,
        req: pb::CommitBlocksRequest,
    ) -> MetaResult<(rec::Inode, Vec<pb::BlockRef>)> {
        let bs = self.block_size();
        let durable = req.durable;
        let held = self.reservations.clone();
        self.change_in(c, vec![req.ino], durable, move |w, c| data::commit_blocks(w, c, &req, bs, &held)).await
    }

    /// Sets the caller's quota reservation for `ino` (see the Reserve RPC).
    pub fn reserve(&self, c: &Caller, ino: u64, bytes: u64) -> MetaResult<()> {
        if bytes > 0 {
            c.writable()?;
        }
        let r = self.read_in(c, &[ino])?;
        let inode = inode_in(&r.open_table(INODES)?, ino)?.ok_or_else(|| no_inode(ino))?;
        let quotas = r.open_table(QUOTAS)?;
        let quota_of = |q: u64| -> MetaResult<Option<rec::QuotaDir>> {
            quotas.get(q)?.map(|v| schema::dec::<rec::QuotaDir>(v.value())).transpose()
        };
        let levels = quota::levels(inode.quota_root, quota_of)?;
        let counters: rec::Counters = match r.open_table(META)?.get("counters")? {
            Some(v) => schema::dec(v.value())?,
            None => Default::default(),
        };
        self.reservations.reserve((c.session, ino), bytes, levels, |level| {
            if level == 0 {
                let q = counters.quota.unwrap_or_default();
                return Ok((q.max_bytes, counters.used_bytes, "volume".to_string()));
            }
            let qd = quota_of(level)?.unwrap_or_default();
            let what = format!("directory {}", if qd.path.is_empty() { level.to_string() } else { qd.path.clone() });
            Ok((qd.quota.unwrap_or_default().max_bytes, qd.used_bytes, what))
        })
    }
}

impl Drop for VolumeDb {
    fn drop(&mut self) {
        // Final sync, and the writer thread lets go of the database file.
        self.writer.stop();
    }
}

/// Enqueues the write of an inode's lock list (called under the lock table's lock, so lists reach
/// the database in the order they changed). The write's outcome is logged, not awaited.
pub fn persist_locks(writer: &Writer, ino: u64, list: &[Lock]) {
    let empty = list.is_empty();
    let bytes = rec::LockList { locks: list.iter().map(Lock::to_rec).collect() }.encode_to_vec();
    let rx = writer.submit(false, move |txn| {
        let mut t = txn.open_table(LOCKS)?;
        if empty {
            t.remove(ino)?;
        } else {
            t.insert(ino, bytes.as_slice())?;
        }
        Ok(())
    });
    tokio::spawn(async move {
        if let Ok(Err(e)) = rx.await {
            tracing::error!(ino, error = %e, "persisting locks failed");
        }
    });
}
