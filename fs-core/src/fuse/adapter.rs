//! Translates FUSE requests into [`StratusFs`] calls and their results into replies. Nothing
//! here decides filesystem behaviour; every reply path ends in exactly one reply.

use std::sync::Arc;
use std::time::Duration;

use super::abi::{self, Wire, fattr, opcode};
use super::session::{Handler, InitParams, Notifier, Replier, Request};
use crate::fs::{Ctx, FsResult, LockSpec, NewNode, SetAttr, StratusFs, TimeSet, WriteData};
use crate::wire::pb;

/// The FUSE side of a mount: the filesystem, what INIT agreed, and where notifications go.
/// Node ids are the server's inode numbers except FUSE's root (node 1), which is the mount's root
/// inode; this is the one place that mapping happens.
pub struct Adapter {
    pub fs: Arc<StratusFs>,
    pub params: InitParams,
    pub notifier: Notifier,
    pub counters: OpCounters,
}

/// What a mount's kernel asked of it (since this process started serving it).
#[derive(Debug, Default)]
pub struct OpCounters {
    pub requests: std::sync::atomic::AtomicU64,
    /// Replies with an error, but for the answers that are normal negatives (ENOENT, ENODATA).
    pub errors: std::sync::atomic::AtomicU64,
    pub bytes_read: std::sync::atomic::AtomicU64,
    pub bytes_written: std::sync::atomic::AtomicU64,
    /// Requests the kernel queued again (FUSE_NOTIFY_RESEND after a crash: `unique` bit 63).
    pub resent: std::sync::atomic::AtomicU64,
}

/// A reply body: one or more byte strings written after the header.
type Body = Vec<u8>;

fn split_name(b: &[u8]) -> FsResult<(&[u8], &[u8])> {
    let nul = b.iter().position(|&c| c == 0).ok_or(libc::EINVAL)?;
    Ok((&b[..nul], &b[nul + 1..]))
}

fn name(b: &[u8]) -> FsResult<&[u8]> {
    Ok(split_name(b)?.0)
}

fn arg<T: Wire>(body: &[u8]) -> FsResult<(T, &[u8])> {
    let v = T::read(body).ok_or(libc::EINVAL)?;
    Ok((v, &body[std::mem::size_of::<T>()..]))
}

fn kind_bits(k: pb::FileKind) -> u32 {
    match k {
        pb::FileKind::Regular | pb::FileKind::Unspecified => libc::S_IFREG,
        pb::FileKind::Directory => libc::S_IFDIR,
        pb::FileKind::Symlink => libc::S_IFLNK,
        pb::FileKind::Fifo => libc::S_IFIFO,
        pb::FileKind::Socket => libc::S_IFSOCK,
        pb::FileKind::CharDevice => libc::S_IFCHR,
        pb::FileKind::BlockDevice => libc::S_IFBLK,
    }
}

fn kind_of_mode(mode: u32) -> pb::FileKind {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => pb::FileKind::Directory,
        libc::S_IFLNK => pb::FileKind::Symlink,
        libc::S_IFIFO => pb::FileKind::Fifo,
        libc::S_IFSOCK => pb::FileKind::Socket,
        libc::S_IFCHR => pb::FileKind::CharDevice,
        libc::S_IFBLK => pb::FileKind::BlockDevice,
        _ => pb::FileKind::Regular,
    }
}

fn ttl(d: Duration) -> (u64, u32) {
    (d.as_secs(), d.subsec_nanos())
}

impl Adapter {
    /// Kernel node id → server inode.
    fn ino(&self, node: u64) -> u64 {
        if node == abi::ROOT_ID { self.fs.root() } else { node }
    }

    /// Server inode → kernel node id.
    fn node(&self, ino: u64) -> u64 {
        if ino == self.fs.root() { abi::ROOT_ID } else { ino }
    }

    fn attr(&self, a: &pb::Attr) -> abi::Attr {
        let t = |t: &Option<pb::Timespec>| t.map_or((0, 0), |t| (t.sec as u64, t.nsec));
        let (at, an) = t(&a.atime);
        let (mt, mn) = t(&a.mtime);
        let (ct, cn) = t(&a.ctime);
        abi::Attr {
            ino: self.node(a.ino),
            size: a.size,
            blocks: a.stored.div_ceil(512),
            atime: at,
            mtime: mt,
            ctime: ct,
            atimensec: an,
            mtimensec: mn,
            ctimensec: cn,
            mode: kind_bits(a.kind()) | (a.perm & 0o7777),
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            rdev: a.rdev as u32,
            blksize: 4096,
            flags: 0,
        }
    }

    fn entry(&self, a: &pb::Attr) -> abi::EntryOut {
        let (es, en) = ttl(self.fs.cfg.entry_ttl);
        let (as_, an) = ttl(self.fs.cfg.attr_ttl);
        abi::EntryOut {
            nodeid: self.node(a.ino),
            generation: 0,
            entry_valid: es,
            attr_valid: as_,
            entry_valid_nsec: en,
            attr_valid_nsec: an,
            attr: self.attr(a),
        }
    }

    fn attr_out(&self, a: &pb::Attr) -> Body {
        let (s, n) = ttl(self.fs.cfg.attr_ttl);
        abi::AttrOut { attr_valid: s, attr_valid_nsec: n, dummy: 0, attr: self.attr(a) }.bytes().to_vec()
    }

    fn entry_out(&self, a: &pb::Attr) -> Body {
        self.entry(a).bytes().to_vec()
    }

    fn lock_spec(lk: &abi::LkIn, wait: bool) -> FsResult<LockSpec> {
        let typ = match lk.lk.typ as i32 {
            libc::F_RDLCK => pb::LockType::Read,
            libc::F_WRLCK => pb::LockType::Write,
            libc::F_UNLCK => pb::LockType::Unlock,
            _ => return Err(libc::EINVAL),
        };
        let kind = if lk.lk_flags & abi::LK_FLOCK != 0 { pb::LockKind::Flock } else { pb::LockKind::Posix };
        let end = if lk.lk.end >= i64::MAX as u64 { u64::MAX } else { lk.lk.end };
        Ok(LockSpec { owner: lk.owner, kind, typ, start: lk.lk.start, end, wait })
    }

    async fn read(&self, req: &Request) -> FsResult<Vec<bytes::Bytes>> {
        let h = &req.header;
        let (r, _) = arg::<abi::ReadIn>(req.body())?;
        self.fs
            .read(
                Ctx { uid: h.uid, gid: h.gid, pid: h.pid, unique: h.unique & !crate::fuse::abi::UNIQUE_RESEND },
                self.ino(h.nodeid),
                r.offset,
                r.size,
            )
            .await
    }

    /// WRITE hands its payload over in the pieces it was read into (no copy here).
    async fn write(&self, req: &mut Request) -> FsResult<Body> {
        let h = req.header;
        let (w, _) = arg::<abi::WriteIn>(req.body())?;
        let data = WriteData::pieces(req.take_payload());
        if data.len() != w.size as usize {
            return Err(libc::EINVAL);
        }
        let n = self
            .fs
            .write(
                Ctx { uid: h.uid, gid: h.gid, pid: h.pid, unique: h.unique & !crate::fuse::abi::UNIQUE_RESEND },
                self.ino(h.nodeid),
                w.offset,
                data,
            )
            .await?;
        Ok(abi::WriteOut { size: n, padding: 0 }.bytes().to_vec())
    }

    async fn dispatch(&self, req: &Request) -> FsResult<Body> {
        let h = &req.header;
        let c = Ctx { uid: h.uid, gid: h.gid, pid: h.pid, unique: h.unique & !crate::fuse::abi::UNIQUE_RESEND };
        let fs = &self.fs;
        let body = req.body();
        // The request's inode (FUSE's root node is the mount's root inode).
        let ino = self.ino(h.nodeid);
        match h.opcode {
            opcode::LOOKUP => match fs.lookup(c, ino, name(body)?).await {
                // A name that is not there, cached as such by the kernel for `negative_ttl`.
                Err(libc::ENOENT) if !fs.cfg.negative_ttl.is_zero() => {
                    let (s, n) = ttl(fs.cfg.negative_ttl);
                    let out = abi::EntryOut { entry_valid: s, entry_valid_nsec: n, ..abi::EntryOut::default() };
                    Ok(out.bytes().to_vec())
                }
                r => Ok(self.entry_out(&r?)),
            },
            opcode::GETATTR => Ok(self.attr_out(&fs.getattr(c, ino).await?)),
            opcode::SETATTR => {
                let (s, _) = arg::<abi::SetattrIn>(body)?;
                let ts = |sec: u64, nsec: u32| pb::Timespec { sec: sec as i64, nsec };
                let v = s.valid;
                let time = |set: u32, now: u32, sec, nsec| {
                    if v & now != 0 { Some(TimeSet::Now) } else { (v & set != 0).then(|| TimeSet::At(ts(sec, nsec))) }
                };
                let change = SetAttr {
                    perm: (v & fattr::MODE != 0).then_some(s.mode & 0o7777),
                    uid: (v & fattr::UID != 0).then_some(s.uid),
                    gid: (v & fattr::GID != 0).then_some(s.gid),
                    size: (v & fattr::SIZE != 0).then_some(s.size),
                    atime: time(fattr::ATIME, fattr::ATIME_NOW, s.atime, s.atimensec),
                    mtime: time(fattr::MTIME, fattr::MTIME_NOW, s.mtime, s.mtimensec),
                    ctime: (v & fattr::CTIME != 0).then(|| ts(s.ctime, s.ctimensec)),
                    fh: if v & fattr::FH != 0 { s.fh } else { 0 },
                };
                Ok(self.attr_out(&fs.setattr(c, ino, change).await?))
            }
            opcode::READLINK => fs.readlink(c, ino).await,
            opcode::SYMLINK => {
                let (n, rest) = split_name(body)?;
                let target = name(rest)?;
                Ok(self.entry_out(&fs.symlink(c, ino, n, target).await?))
            }
            opcode::MKNOD | opcode::MKDIR => {
                let (kind, perm, umask, rdev, rest) = if h.opcode == opcode::MKNOD {
                    let (m, rest) = arg::<abi::MknodIn>(body)?;
                    (kind_of_mode(m.mode), m.mode, m.umask, m.rdev as u64, rest)
                } else {
                    let (m, rest) = arg::<abi::MkdirIn>(body)?;
                    (pb::FileKind::Directory, m.mode, m.umask, 0, rest)
                };
                let new = NewNode { kind, perm: perm & 0o7777, umask, rdev };
                Ok(self.entry_out(&fs.mknod(c, ino, name(rest)?, new).await?))
            }
            opcode::UNLINK => fs.unlink(c, ino, name(body)?).await.map(|_| Vec::new()),
            opcode::RMDIR => fs.rmdir(c, ino, name(body)?).await.map(|_| Vec::new()),
            opcode::RENAME | opcode::RENAME2 => {
                let (newdir, flags, rest) = if h.opcode == opcode::RENAME {
                    let (r, rest) = arg::<abi::RenameIn>(body)?;
                    (r.newdir, 0, rest)
                } else {
                    let (r, rest) = arg::<abi::Rename2In>(body)?;
                    (r.newdir, r.flags, rest)
                };
                let (old, rest) = split_name(rest)?;
                let new = name(rest)?;
                fs.rename(c, ino, old, self.ino(newdir), new, flags).await.map(|_| Vec::new())
            }
            opcode::LINK => {
                let (l, rest) = arg::<abi::LinkIn>(body)?;
                Ok(self.entry_out(&fs.link(c, self.ino(l.oldnodeid), ino, name(rest)?).await?))
            }
            opcode::OPEN => {
                let (o, _) = arg::<abi::OpenIn>(body)?;
                let opened = fs.open(c, ino, o.flags).await?;
                let flags = if opened.changed {
                    self.invalidate(h.nodeid).await;
                    0
                } else {
                    abi::fopen::KEEP_CACHE
                };
                Ok(abi::OpenOut { fh: opened.fh, open_flags: flags, backing_id: 0 }.bytes().to_vec())
            }
            opcode::CREATE => {
                let (cr, rest) = arg::<abi::CreateIn>(body)?;
                let (attr, opened) = fs.create(c, ino, name(rest)?, cr.mode & 0o7777, cr.umask, cr.flags).await?;
                if opened.changed {
                    self.invalidate(self.node(attr.ino)).await;
                }
                let mut out = self.entry_out(&attr);
                out.extend_from_slice(abi::OpenOut { fh: opened.fh, open_flags: 0, backing_id: 0 }.bytes());
                Ok(out)
            }
            opcode::FLUSH => {
                let (f, _) = arg::<abi::FlushIn>(body)?;
                fs.flush(c, ino, f.fh, f.lock_owner).await.map(|_| Vec::new())
            }
            opcode::RELEASE => {
                let (r, _) = arg::<abi::ReleaseIn>(body)?;
                fs.release(c, ino, r.fh).await.map(|_| Vec::new())
            }
            opcode::FSYNC => fs.fsync(c, ino).await.map(|_| Vec::new()),
            opcode::FSYNCDIR | opcode::SYNCFS => fs.sync_all(c).await.map(|_| Vec::new()),
            opcode::FALLOCATE => {
                let (a, _) = arg::<abi::FallocateIn>(body)?;
                fs.fallocate(c, ino, a.fh, a.offset, a.length, a.mode as i32).await.map(|_| Vec::new())
            }
            opcode::LSEEK => {
                let (l, _) = arg::<abi::LseekIn>(body)?;
                let offset = fs.lseek(ino, l.offset, l.whence as i32).await?;
                Ok(abi::LseekOut { offset }.bytes().to_vec())
            }
            opcode::OPENDIR => Ok(abi::OpenOut { fh: 0, open_flags: 0, backing_id: 0 }.bytes().to_vec()),
            opcode::RELEASEDIR => Ok(Vec::new()),
            opcode::READDIR | opcode::READDIRPLUS => {
                let (r, _) = arg::<abi::ReadIn>(body)?;
                self.readdir(c, ino, r.offset, r.size as usize, h.opcode == opcode::READDIRPLUS).await
            }
            opcode::STATFS => {
                let s = fs.statfs(c, ino).await?;
                let bsize = 4096u64;
                let st = abi::Kstatfs {
                    blocks: s.total_bytes / bsize,
                    bfree: s.total_bytes.saturating_sub(s.used_bytes) / bsize,
                    bavail: s.total_bytes.saturating_sub(s.used_bytes) / bsize,
                    files: s.total_inodes,
                    ffree: s.total_inodes.saturating_sub(s.used_inodes),
                    bsize: bsize as u32,
                    namelen: s.max_name_len,
                    frsize: bsize as u32,
                    ..Default::default()
                };
                Ok(st.bytes().to_vec())
            }
            opcode::SETXATTR => {
                let ext = self.params.has(abi::init::SETXATTR_EXT);
                let (s, rest) = arg::<abi::SetxattrIn>(body)?;
                let rest = if ext { rest } else { &body[8..] };
                let (n, value) = split_name(rest)?;
                let value = value.get(..s.size as usize).ok_or(libc::EINVAL)?;
                let kill_sgid = ext && s.setxattr_flags & abi::SETXATTR_ACL_KILL_SGID != 0;
                fs.setxattr(c, ino, n, value, s.flags, kill_sgid).await.map(|_| Vec::new())
            }
            opcode::GETXATTR => {
                let (g, rest) = arg::<abi::GetxattrIn>(body)?;
                let v = fs.getxattr(c, ino, name(rest)?).await?;
                sized(v, g.size)
            }
            opcode::LISTXATTR => {
                let (g, _) = arg::<abi::GetxattrIn>(body)?;
                let mut all = Vec::new();
                for n in fs.listxattr(c, ino).await? {
                    all.extend_from_slice(&n);
                    all.push(0);
                }
                sized(all, g.size)
            }
            opcode::REMOVEXATTR => fs.removexattr(c, ino, name(body)?).await.map(|_| Vec::new()),
            opcode::GETLK => {
                let (lk, _) = arg::<abi::LkIn>(body)?;
                let r = fs.getlk(c, ino, lk.fh, Self::lock_spec(&lk, false)?).await?;
                let typ = match r.r#type() {
                    pb::LockType::Read => libc::F_RDLCK,
                    pb::LockType::Write => libc::F_WRLCK,
                    _ => libc::F_UNLCK,
                } as u32;
                let end = if r.end == u64::MAX { i64::MAX as u64 } else { r.end };
                let out = abi::LkOut { lk: abi::FileLock { start: r.start, end, typ, pid: r.pid } };
                Ok(out.bytes().to_vec())
            }
            opcode::SETLK | opcode::SETLKW => {
                let (lk, _) = arg::<abi::LkIn>(body)?;
                let lock = Self::lock_spec(&lk, h.opcode == opcode::SETLKW)?;
                fs.setlk(c, ino, lk.fh, lock).await.map(|_| Vec::new())
            }
            // default_permissions: the kernel checks access itself.
            opcode::ACCESS => Ok(Vec::new()),
            opcode::IOCTL => Err(libc::ENOTTY),
            opcode::TMPFILE => Err(libc::EOPNOTSUPP),
            _ => Err(libc::ENOSYS),
        }
    }

    /// Drops the kernel's cached attributes and pages of `node` (close-to-open consistency). The
    /// kernel processes the notification inside write(2), which may wait for page locks: it runs
    /// on a blocking thread, never on a runtime worker.
    async fn invalidate(&self, node: u64) {
        let n = self.notifier.clone();
        let r = tokio::task::spawn_blocking(move || {
            let body = abi::NotifyInvalInodeOut { ino: node, off: 0, len: 0 };
            n.notify(abi::notify::INVAL_INODE, &[body.bytes()])
        })
        .await;
        match r {
            Ok(Ok(())) => {}
            // ENOENT: the kernel does not have the inode cached; nothing to drop.
            Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Ok(Err(e)) => tracing::warn!(node, error = %e, "invalidating the kernel's cache of an inode failed"),
            Err(e) => tracing::warn!(node, error = %e, "invalidation task failed"),
        }
    }

    async fn readdir(&self, c: Ctx, ino: u64, offset: u64, size: usize, plus: bool) -> FsResult<Body> {
        let per_entry = if plus { 160 } else { 40 };
        let limit = (size / per_entry).clamp(1, 1024) as u32;
        let entries = self.fs.readdir(c, ino, offset, limit, plus).await?;
        let mut out = Vec::with_capacity(size);
        for e in entries {
            let dirent = abi::Dirent {
                ino: self.node(e.ino),
                off: e.cookie,
                namelen: e.name.len() as u32,
                typ: kind_bits(e.kind()) >> 12,
            };
            let entry_len =
                abi::dirent_size(e.name.len()) + if plus { std::mem::size_of::<abi::EntryOut>() } else { 0 };
            if out.len() + entry_len > size {
                break;
            }
            if plus {
                let is_dot = e.name == b"." || e.name == b"..";
                let entry = match (&e.attr, is_dot) {
                    (Some(a), false) => self.entry(a),
                    // The kernel ignores `.` and `..` in readdirplus; their node id 0 says "no entry".
                    _ => abi::EntryOut::default(),
                };
                out.extend_from_slice(entry.bytes());
            }
            out.extend_from_slice(dirent.bytes());
            out.extend_from_slice(&e.name);
            let pad = abi::dirent_size(e.name.len()) - std::mem::size_of::<abi::Dirent>() - e.name.len();
            out.extend(std::iter::repeat_n(0u8, pad));
        }
        Ok(out)
    }
}

/// The xattr protocol: size 0 asks for the length; a too-small buffer is ERANGE.
fn sized(v: Vec<u8>, size: u32) -> FsResult<Body> {
    if size == 0 {
        Ok(abi::GetxattrOut { size: v.len() as u32, padding: 0 }.bytes().to_vec())
    } else if v.len() > size as usize {
        Err(libc::ERANGE)
    } else {
        Ok(v)
    }
}

impl Handler for Adapter {
    async fn handle(self: Arc<Self>, mut req: Request, reply: Replier) {
        tracing::trace!(unique = req.header.unique, opcode = req.header.opcode, nodeid = req.header.nodeid, "request");
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.counters;
        c.requests.fetch_add(1, Relaxed);
        if req.header.unique & crate::fuse::abi::UNIQUE_RESEND != 0 {
            c.resent.fetch_add(1, Relaxed);
        }
        let r = match req.header.opcode {
            // READ answers with the cached chunks' own bytes (no copy into a reply buffer).
            opcode::READ => {
                let r = self.read(&req).await;
                if let Ok(pieces) = &r {
                    c.bytes_read.fetch_add(pieces.iter().map(|p| p.len() as u64).sum(), Relaxed);
                }
                r
            }
            opcode::WRITE => {
                let r = self.write(&mut req).await;
                if let Ok(body) = &r
                    && let Some(size) = body.get(..4)
                {
                    c.bytes_written.fetch_add(u32::from_le_bytes(size.try_into().expect("4 bytes")) as u64, Relaxed);
                }
                r.map(|body| vec![body.into()])
            }
            _ => self.dispatch(&req).await.map(|body| vec![body.into()]),
        };
        match r {
            Ok(pieces) => reply.ok(&pieces.iter().map(|p| &p[..]).collect::<Vec<_>>()),
            Err(errno) => {
                if errno != libc::ENOENT && errno != libc::ENODATA {
                    c.errors.fetch_add(1, Relaxed);
                }
                reply.err(errno)
            }
        }
    }

    fn interruptible(&self, h: &abi::InHeader) -> bool {
        h.opcode == opcode::SETLKW
    }

    /// A WRITE's payload arrives in the block store's chunks, so aligned pieces become the
    /// file's chunks without a copy (docs/decisions.md, "Writes without a copy").
    fn payload_piece(&self) -> usize {
        self.fs.write_piece()
    }
}
