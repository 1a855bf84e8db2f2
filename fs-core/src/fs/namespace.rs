//! Namespace calls: lookups, attributes, names, links, directories and extended attributes,
//! each one request to the metadata server unless a directory this mount holds answers it
//! ([`super::deleg`]).

use super::*;

impl StratusFs {
    pub async fn lookup(&self, c: Ctx, parent: u64, name: &[u8]) -> FsResult<pb::Attr> {
        let name = &*self.stored_name(parent, name)?;
        if let Some(r) = self.lookup_here(parent, name).await {
            return r;
        }
        self.settle(&[parent]).await?;
        let req = pb::NameRequest { ctx: self.ctx(c), parent, name: name.to_vec() };
        let a = self.rpc().lookup(req).await.map_err(errno_of)?.into_inner().attr.unwrap_or_default();
        Ok(self.local_attr(a).await)
    }

    pub async fn getattr(&self, c: Ctx, ino: u64) -> FsResult<pb::Attr> {
        if let Some(a) = self.getattr_here(ino).await {
            return Ok(a);
        }
        self.settle(&[ino]).await?;
        // Right after this mount committed the file or changed the directory, the reply is the answer.
        if let Some(a) = self.data.attrs.get(ino) {
            return Ok(a);
        }
        let r = self.rpc().get_attr(pb::InodeRequest { ctx: self.ctx(c), ino }).await;
        let a = r.map_err(errno_of)?.into_inner().attr.unwrap_or_default();
        Ok(self.local_attr(a).await)
    }

    pub async fn setattr(&self, c: Ctx, ino: u64, change: SetAttr) -> FsResult<pb::Attr> {
        let req = change.request(self.ctx(c), ino);
        self.settle(&[ino]).await?;
        let Some(size) = req.size else {
            let r = self.rpc().set_attr(req).await;
            self.void_remembered_attrs();
            let a = r.map_err(errno_of)?.into_inner().attr.unwrap_or_default();
            self.deleg.lock().noted(a.ino, None, None, Some(a));
            return Ok(self.local_attr(a).await);
        };
        // A truncate: unflushed writes go first so it applies to them too, and no write of this
        // mount slips in between.
        let f = self.file(req.ino);
        let mut st = f.lock().await;
        self.data.commit(c, &mut st, false).await?;
        let r = self.rpc().set_attr(req).await;
        self.void_remembered_attrs();
        let a = r.map_err(errno_of)?.into_inner().attr.unwrap_or_default();
        debug_assert_eq!(a.size, size);
        self.data.truncated(c, &mut st, &a).await?;
        Ok(a)
    }

    /// mknod and mkdir.
    pub async fn mknod(&self, c: Ctx, parent: u64, name: &[u8], node: NewNode) -> FsResult<pb::Attr> {
        let name = &*self.stored_name(parent, name)?;
        let req = pb::MkNodRequest {
            ctx: self.ctx_once(c),
            parent,
            name: name.to_vec(),
            kind: node.kind as i32,
            perm: node.perm & 0o7777 & !self.cfg.umask,
            umask: node.umask,
            rdev: node.rdev,
            ..Default::default()
        };
        let dir = node.kind == pb::FileKind::Directory;
        self.settle(&[req.parent]).await?;
        let (parent, name) = (req.parent, req.name.clone());
        let before = self.data.attrs.epoch();
        let r = if dir { self.rpc().mk_dir(req).await } else { self.rpc().mk_nod(req).await };
        let r = self.named_in(parent, &name, r).await?;
        self.data.attrs.remember(r.parent, before);
        Ok(r.attr.unwrap_or_default())
    }

    pub async fn symlink(&self, c: Ctx, parent: u64, name: &[u8], target: &[u8]) -> FsResult<pb::Attr> {
        let name = &*self.stored_name(parent, name)?;
        let target = match target.len() {
            0 => return Err(libc::ENOENT),
            1..=PATH_MAX => self.stored_value(0, SYMLINK, target)?,
            _ => return Err(libc::ENAMETOOLONG),
        };
        let req = pb::SymlinkRequest { ctx: self.ctx_once(c), parent, name: name.to_vec(), target };
        self.settle(&[req.parent]).await?;
        let before = self.data.attrs.epoch();
        let r = self.rpc().symlink(req).await;
        let r = self.named_in(parent, name, r).await?;
        self.data.attrs.remember(r.parent, before);
        Ok(r.attr.unwrap_or_default())
    }

    pub async fn readlink(&self, c: Ctx, ino: u64) -> FsResult<Vec<u8>> {
        let r = self.rpc().read_link(pb::InodeRequest { ctx: self.ctx(c), ino }).await;
        self.open_value(0, SYMLINK, r.map_err(errno_of)?.into_inner().target)
    }

    pub async fn unlink(&self, c: Ctx, parent: u64, name: &[u8]) -> FsResult<()> {
        let name = &*self.stored_name(parent, name)?;
        if self.unlink_here(parent, name) {
            return Ok(());
        }
        self.settle(&[parent]).await?;
        let req = pb::NameRequest { ctx: self.ctx_once(c), parent, name: name.to_vec() };
        let before = self.data.attrs.epoch();
        let r = self.rpc().unlink(req).await;
        let r = self.removed_or_renamed(before, r)?;
        self.deleg.lock().noted(parent, None, Some(name), r.parent);
        Ok(())
    }

    pub async fn rmdir(&self, c: Ctx, parent: u64, name: &[u8]) -> FsResult<()> {
        let name = &*self.stored_name(parent, name)?;
        // The directory removed may be one this mount holds: what is pending there goes first.
        self.settle_all().await?;
        let req = pb::NameRequest { ctx: self.ctx_once(c), parent, name: name.to_vec() };
        let before = self.data.attrs.epoch();
        let r = self.rpc().rm_dir(req).await;
        let r = self.removed_or_renamed(before, r)?;
        self.deleg.lock().noted(parent, None, Some(name), r.parent);
        Ok(())
    }

    pub async fn rename(
        &self,
        c: Ctx,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        let name = &*self.stored_name(parent, name)?;
        let new_name = &*self.stored_name(new_parent, new_name)?;
        let req = pb::RenameRequest {
            ctx: self.ctx_once(c),
            parent,
            name: name.to_vec(),
            new_parent,
            new_name: new_name.to_vec(),
            flags,
        };
        // The entry replaced may be a directory this mount holds: what is pending there goes first.
        self.settle_all().await?;
        let before = self.data.attrs.epoch();
        let (p, np) = (req.parent, req.new_parent);
        let r = self.rpc().rename(req).await;
        if let Err(s) = &r {
            self.maybe_named(np, s).await;
        }
        let r = self.removed_or_renamed(before, r)?;
        let mut st = self.deleg.lock();
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        st.noted(p, exchange.then_some(name), (!exchange).then_some(name), r.parent);
        st.noted(np, Some(new_name), None, if p == np { r.parent } else { r.new_parent });
        Ok(())
    }

    pub async fn link(&self, c: Ctx, ino: u64, new_parent: u64, new_name: &[u8]) -> FsResult<pb::Attr> {
        let new_name = &*self.stored_name(new_parent, new_name)?;
        let req = pb::LinkRequest { ctx: self.ctx_once(c), ino, new_parent, new_name: new_name.to_vec() };
        self.settle(&[req.ino, req.new_parent]).await?;
        let np = req.new_parent;
        let before = self.data.attrs.epoch();
        let r = self.rpc().link(req).await;
        let after = self.changed_outside_data_path(before);
        let r = self.named_in(np, new_name, r).await?;
        if let Some(e) = after {
            self.data.attrs.remember(r.parent, e);
        }
        Ok(self.local_attr(r.attr.unwrap_or_default()).await)
    }

    /// One page of directory entries after `cookie` (attributes included with `plus`).
    pub async fn readdir(&self, c: Ctx, ino: u64, cookie: u64, limit: u32, plus: bool) -> FsResult<Vec<pb::DirEntry>> {
        self.settle(&[ino]).await?;
        let req = pb::ReadDirRequest { ctx: self.ctx(c), ino, cookie, limit, plus };
        let mut entries = self.rpc().read_dir(req).await.map_err(errno_of)?.into_inner().entries;
        if self.keys.is_some() {
            for e in &mut entries {
                e.name = self.open_name(ino, std::mem::take(&mut e.name))?;
            }
        }
        if plus {
            for e in &mut entries {
                if let Some(a) = e.attr.take() {
                    e.attr = Some(self.local_attr(a).await);
                }
            }
        }
        Ok(entries)
    }

    pub async fn statfs(&self, c: Ctx, ino: u64) -> FsResult<pb::StatFsReply> {
        let r = self.rpc().stat_fs(pb::InodeRequest { ctx: self.ctx(c), ino }).await;
        Ok(r.map_err(errno_of)?.into_inner())
    }

    pub async fn getxattr(&self, c: Ctx, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        // The kernel asks for security.capability before every write(2) (to drop it): an absent
        // one is remembered for the attribute TTL instead of asking the server each time.
        let capability = name == b"security.capability";
        if capability
            && let Some(at) = self.no_capability.lock().get(&ino)
            && at.elapsed() < self.cfg.attr_ttl
        {
            return Err(libc::ENODATA);
        }
        self.settle(&[ino]).await?;
        let req = pb::XattrRequest { ctx: self.ctx(c), ino, name: name.to_vec() };
        match self.rpc().get_xattr(req).await.map_err(errno_of) {
            Err(libc::ENODATA) if capability => {
                let mut cache = self.no_capability.lock();
                if cache.len() > 100_000 {
                    cache.clear();
                }
                cache.insert(ino, std::time::Instant::now());
                Err(libc::ENODATA)
            }
            r => self.open_value(ino, name, r?.into_inner().value),
        }
    }

    pub async fn listxattr(&self, c: Ctx, ino: u64) -> FsResult<Vec<Vec<u8>>> {
        self.settle(&[ino]).await?;
        let r = self.rpc().list_xattr(pb::InodeRequest { ctx: self.ctx(c), ino }).await;
        Ok(r.map_err(errno_of)?.into_inner().names)
    }

    /// `acl_kill_sgid`: the kernel asks that setting this ACL clear the setgid bit.
    pub async fn setxattr(
        &self,
        c: Ctx,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: u32,
        acl_kill_sgid: bool,
    ) -> FsResult<()> {
        if value.len() > crate::server::ns::MAX_XATTR_VALUE {
            return Err(libc::E2BIG);
        }
        // A held directory gives its delegation back: a default ACL changes what creates there do.
        self.give_back(ino).await?;
        let req = pb::SetXattrRequest {
            ctx: self.ctx_once(c),
            ino,
            name: name.to_vec(),
            value: self.stored_value(ino, name, value)?,
            flags,
            acl_kill_sgid,
        };
        let r = self.rpc().set_xattr(req).await;
        self.void_remembered_attrs();
        r.map_err(errno_of)?;
        self.no_capability.lock().remove(&ino);
        Ok(())
    }

    pub async fn removexattr(&self, c: Ctx, ino: u64, name: &[u8]) -> FsResult<()> {
        self.give_back(ino).await?;
        let req = pb::XattrRequest { ctx: self.ctx_once(c), ino, name: name.to_vec() };
        let r = self.rpc().remove_xattr(req).await;
        self.void_remembered_attrs();
        r.map_err(errno_of)?;
        Ok(())
    }

    /// fsync of a directory, syncfs: every change this session made is durable on return.
    pub async fn sync_all(&self, c: Ctx) -> FsResult<()> {
        self.settle_all().await?;
        self.rpc().sync(self.session.ctx(c.uid, c.gid, c.pid)).await.map_err(errno_of)?;
        Ok(())
    }
}
