//! A small path-based client over one session, for tests: every call returns `Ok` or the errno
//! the server sent.

use std::sync::Arc;

use fs_core::testkit::MetaError;
use fs_core::testkit::Session;
use fs_core::testkit::pb;

pub type Res<T> = Result<T, i32>;

pub fn errno(s: tonic::Status) -> i32 {
    MetaError::from_status(&s).errno()
}

#[derive(Clone)]
pub struct Fs {
    pub s: Arc<Session>,
    /// The directory paths are relative to.
    pub base: u64,
    pub uid: u32,
    pub gid: u32,
}

impl Fs {
    pub fn new(s: Arc<Session>) -> Fs {
        let base = s.root_ino();
        Fs { s, base, uid: 0, gid: 0 }
    }

    pub fn ctx(&self) -> Option<pb::Context> {
        Some(self.s.ctx(self.uid, self.gid, 1))
    }

    pub fn rpc(&self) -> fs_core::testkit::MetaRpc {
        self.s.rpc.clone()
    }

    pub async fn lookup(&self, parent: u64, name: &[u8]) -> Res<pb::Attr> {
        let r =
            self.rpc().lookup(pb::NameRequest { ctx: self.ctx(), parent, name: name.to_vec() }).await.map_err(errno)?;
        Ok(r.into_inner().attr.unwrap())
    }

    /// The inode of `path` (relative to `base`; "" is `base`).
    pub async fn resolve(&self, path: &str) -> Res<u64> {
        let mut ino = self.base;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            ino = self.lookup(ino, part.as_bytes()).await?.ino;
        }
        Ok(ino)
    }

    /// The parent directory's inode and the last name of `path`.
    pub async fn parent(&self, path: &str) -> Res<(u64, Vec<u8>)> {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        Ok((self.resolve(dir).await?, name.as_bytes().to_vec()))
    }

    pub async fn getattr(&self, ino: u64) -> Res<pb::Attr> {
        let r = self.rpc().get_attr(pb::InodeRequest { ctx: self.ctx(), ino }).await.map_err(errno)?;
        Ok(r.into_inner().attr.unwrap())
    }

    pub async fn mknod(&self, path: &str, kind: pb::FileKind, perm: u32) -> Res<pb::Attr> {
        let (parent, name) = self.parent(path).await?;
        let req = pb::MkNodRequest { ctx: self.ctx(), parent, name, kind: kind as i32, perm, ..Default::default() };
        let r =
            if kind == pb::FileKind::Directory { self.rpc().mk_dir(req).await } else { self.rpc().mk_nod(req).await };
        Ok(r.map_err(errno)?.into_inner().attr.unwrap())
    }

    pub async fn mkdir(&self, path: &str) -> Res<pb::Attr> {
        self.mknod(path, pb::FileKind::Directory, 0o755).await
    }

    pub async fn create(&self, path: &str) -> Res<pb::Attr> {
        self.mknod(path, pb::FileKind::Regular, 0o644).await
    }

    /// Create + open; returns (attr, open id).
    pub async fn create_open(&self, path: &str, exclusive: bool) -> Res<(pb::Attr, u64)> {
        let (parent, name) = self.parent(path).await?;
        let r = self
            .rpc()
            .create(pb::MkNodRequest {
                ctx: self.ctx(),
                parent,
                name,
                kind: pb::FileKind::Regular as i32,
                perm: 0o644,
                flags: libc::O_RDWR as u32,
                exclusive,
                ..Default::default()
            })
            .await
            .map_err(errno)?
            .into_inner();
        Ok((r.attr.unwrap(), r.open_id))
    }

    pub async fn open(&self, ino: u64, flags: i32) -> Res<u64> {
        let r = self.rpc().open(pb::OpenRequest { ctx: self.ctx(), ino, flags: flags as u32 }).await.map_err(errno)?;
        Ok(r.into_inner().open_id)
    }

    pub async fn release(&self, open_id: u64, owners: Vec<u64>) -> Res<()> {
        self.rpc()
            .release(pb::ReleaseRequest { ctx: self.ctx(), open_id, lock_owners: owners })
            .await
            .map_err(errno)?;
        Ok(())
    }

    pub async fn symlink(&self, path: &str, target: &str) -> Res<pb::Attr> {
        let (parent, name) = self.parent(path).await?;
        let r = self
            .rpc()
            .symlink(pb::SymlinkRequest { ctx: self.ctx(), parent, name, target: target.as_bytes().to_vec() })
            .await
            .map_err(errno)?;
        Ok(r.into_inner().attr.unwrap())
    }

    pub async fn readlink(&self, ino: u64) -> Res<Vec<u8>> {
        Ok(self.rpc().read_link(pb::InodeRequest { ctx: self.ctx(), ino }).await.map_err(errno)?.into_inner().target)
    }

    pub async fn unlink(&self, path: &str) -> Res<()> {
        let (parent, name) = self.parent(path).await?;
        self.rpc().unlink(pb::NameRequest { ctx: self.ctx(), parent, name }).await.map_err(errno)?;
        Ok(())
    }

    pub async fn rmdir(&self, path: &str) -> Res<()> {
        let (parent, name) = self.parent(path).await?;
        self.rpc().rm_dir(pb::NameRequest { ctx: self.ctx(), parent, name }).await.map_err(errno)?;
        Ok(())
    }

    pub async fn link(&self, src: &str, dst: &str) -> Res<pb::Attr> {
        let ino = self.resolve(src).await?;
        let (new_parent, new_name) = self.parent(dst).await?;
        let r = self.rpc().link(pb::LinkRequest { ctx: self.ctx(), ino, new_parent, new_name }).await.map_err(errno)?;
        Ok(r.into_inner().attr.unwrap())
    }

    pub async fn rename(&self, src: &str, dst: &str, flags: u32) -> Res<()> {
        let (parent, name) = self.parent(src).await?;
        let (new_parent, new_name) = self.parent(dst).await?;
        self.rpc()
            .rename(pb::RenameRequest { ctx: self.ctx(), parent, name, new_parent, new_name, flags })
            .await
            .map_err(errno)?;
        Ok(())
    }

    pub async fn setattr(&self, ino: u64, f: impl FnOnce(&mut pb::SetAttrRequest)) -> Res<pb::Attr> {
        let mut req = pb::SetAttrRequest { ctx: self.ctx(), ino, ..Default::default() };
        f(&mut req);
        Ok(self.rpc().set_attr(req).await.map_err(errno)?.into_inner().attr.unwrap())
    }

    pub async fn setxattr(&self, ino: u64, name: &str, value: &[u8], flags: u32) -> Res<()> {
        self.rpc()
            .set_xattr(pb::SetXattrRequest {
                ctx: self.ctx(),
                ino,
                name: name.as_bytes().to_vec(),
                value: value.to_vec(),
                flags,
                acl_kill_sgid: false,
            })
            .await
            .map_err(errno)?;
        Ok(())
    }

    pub async fn getxattr(&self, ino: u64, name: &str) -> Res<Vec<u8>> {
        let r = self
            .rpc()
            .get_xattr(pb::XattrRequest { ctx: self.ctx(), ino, name: name.as_bytes().to_vec() })
            .await
            .map_err(errno)?;
        Ok(r.into_inner().value)
    }

    pub async fn listxattr(&self, ino: u64) -> Res<Vec<Vec<u8>>> {
        Ok(self.rpc().list_xattr(pb::InodeRequest { ctx: self.ctx(), ino }).await.map_err(errno)?.into_inner().names)
    }

    pub async fn removexattr(&self, ino: u64, name: &str) -> Res<()> {
        self.rpc()
            .remove_xattr(pb::XattrRequest { ctx: self.ctx(), ino, name: name.as_bytes().to_vec() })
            .await
            .map_err(errno)?;
        Ok(())
    }

    /// Every entry of a directory (without `.` and `..`), reading in pages of `page`.
    pub async fn readdir(&self, ino: u64, page: u32) -> Res<Vec<pb::DirEntry>> {
        let mut out = Vec::new();
        let mut cookie = 0;
        loop {
            let r = self
                .rpc()
                .read_dir(pb::ReadDirRequest { ctx: self.ctx(), ino, cookie, limit: page, plus: true })
                .await
                .map_err(errno)?
                .into_inner();
            if let Some(last) = r.entries.last() {
                cookie = last.cookie;
            }
            out.extend(r.entries.into_iter().filter(|e| e.name != b"." && e.name != b".."));
            if r.eof {
                return Ok(out);
            }
        }
    }

    /// Allocates one block id and commits it at `index` (built on `base`), ending at `end`.
    pub async fn write_block(
        &self,
        ino: u64,
        index: u64,
        base: u64,
        len: u32,
        end: u64,
        durable: bool,
    ) -> Res<pb::Attr> {
        let ids =
            self.rpc().allocate_blocks(pb::AllocateBlocksRequest { ctx: self.ctx(), count: 1 }).await.map_err(errno)?;
        let id = ids.into_inner().ids[0];
        self.commit(ino, vec![pb::BlockChange { index, base_version: base, block: Some(block(id, len)) }], end, durable)
            .await
    }

    pub async fn commit(&self, ino: u64, changes: Vec<pb::BlockChange>, end: u64, durable: bool) -> Res<pb::Attr> {
        let r = self
            .rpc()
            .commit_blocks(pb::CommitBlocksRequest {
                ctx: self.ctx(),
                ino,
                open_id: 0,
                changes,
                end,
                mtime: None,
                durable,
                reserved: 0,
            })
            .await
            .map_err(errno)?;
        Ok(r.into_inner().attr.unwrap())
    }

    pub async fn blocks(&self, ino: u64) -> Res<Vec<pb::BlockRef>> {
        let r = self
            .rpc()
            .get_blocks(pb::GetBlocksRequest { ctx: self.ctx(), ino, first_index: 0, count: 0 })
            .await
            .map_err(errno)?;
        Ok(r.into_inner().blocks)
    }
}

pub fn block(id: u64, len: u32) -> pb::BlockRef {
    pb::BlockRef { id, len, stored_len: len, checksum: vec![1, 2, 3, 4], ..Default::default() }
}
