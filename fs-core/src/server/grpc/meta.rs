//! The `Meta` service: what a mount asks of its session, one RPC per filesystem operation.

use tonic::{Request, Status};

use super::*;

#[tonic::async_trait]
impl pb::meta_server::Meta for MetaService {
    async fn open_session(&self, req: Request<pb::OpenSessionRequest>) -> R<pb::OpenSessionReply> {
        self.call("open_session", self.srv.open_session(req.into_inner())).await
    }

    async fn heartbeat(&self, req: Request<pb::Context>) -> R<pb::HeartbeatReply> {
        self.call("heartbeat", async {
            let (s, _) = self.srv.session(Some(req.get_ref()))?;
            let backend_json = s.volume.info().backend_json;
            Ok(pb::HeartbeatReply { lease_ms: self.srv.cfg.lease.as_millis() as u32, backend_json })
        })
        .await
    }

    async fn close_session(&self, req: Request<pb::Context>) -> R<pb::Empty> {
        self.call("close_session", async {
            let (s, _) = self.srv.session(Some(req.get_ref()))?;
            self.srv.end_session(&s.id, "closed by the client").await;
            Ok(pb::Empty {})
        })
        .await
    }

    async fn lookup(&self, req: Request<pb::NameRequest>) -> R<pb::EntryReply> {
        self.call("lookup", async {
            let r = req.into_inner();
            let (s, c) = self.srv.session(r.ctx.as_ref())?;
            let (_, inode) = s.volume.settled(|| s.volume.lookup(&c, r.parent, &r.name)).await?;
            Ok(entry(&inode))
        })
        .await
    }

    async fn get_attr(&self, req: Request<pb::InodeRequest>) -> R<pb::AttrReply> {
        self.call("getattr", async {
            let r = req.into_inner();
            let (s, c) = self.srv.session(r.ctx.as_ref())?;
            Ok(attr_reply(&s.volume.settled(|| s.volume.getattr(&c, r.ino)).await?))
        })
        .await
    }

    async fn set_attr(&self, req: Request<pb::SetAttrRequest>) -> R<pb::AttrReply> {
        self.call("setattr", async {
            let r = req.into_inner();
            let (s, c) = self.srv.session(r.ctx.as_ref())?;
            Ok(attr_reply(&s.volume.setattr(&c, r).await?))
        })
        .await
    }

    async fn mk_nod(&self, req: Request<pb::MkNodRequest>) -> R<pb::EntryReply> {
        self.call("mknod", async {
            let r = req.into_inner();
            let (s, c) = self.srv.session(r.ctx.as_ref())?;
            if r.kind() == pb::FileKind::Directory {
                return Err(MetaError::fs(libc::EINVAL, "create directories with MkDir"));
            }
            let parent = r.parent;
            let e = entry(&s.volume.mknod(&c, r).await?.1);
            Ok(pb::EntryReply { parent: dir_after(&s.volume, &c, parent), ..e })
        })
        .await
    }

    async fn mk_dir(&self, req: Request<pb::MkNodRequest>) -> R<pb::EntryReply> {
        self.call("mkdir", async {
            let mut r = req.into_inner();
            let (s, c) = self.srv.session(r.ctx.as_ref())?;
            r.set_kind(pb::FileKind::Directory);
            let parent = r.parent;
            let e = entry(&s.volume.mknod(&c, r).await?.1);
            Ok(pb::EntryReply { parent: dir_after(&s.volume, &c, parent), ..e })
        })
        .await
    }

    async fn symlink(&self, req: Request<pb::SymlinkRequest>) -> R<pb::EntryReply> {
        self.call("symlink", async {
            let r = req.into_inner();
            let (s, c) = self.srv.session(r.ctx.as_ref())?;
            let e = entry(&s.volume.symlink(&c, r.parent, r.name, r.target).await?.1);
            Ok(pb::EntryReply { parent: dir_after(&s.volume, &c, r.parent), ..e })
        })
        .await
    }

    async fn read_link(&self, req: Request<pb::InodeRequest>) -> R<pb::ReadLinkReply> {
        self.call("readlink", async {
            let r = req.into_inner();
            let (s, c) = self.srv.session(r.ctx.as_ref())?;
            Ok(pb::ReadLinkReply { target: s.volume.settled(|| s.volume.readlink(&c, r.ino)).await? })
        })
        .await
    }

    async fn unlink(&self, req: Request<pb::NameRequest>) -> R<pb::ParentsReply> {
        self.call("unlink", async {
            let r = req.into_inner();
            let (s, c) = self.srv.session(r.ctx.as_ref())?;
            s.volume.unlink(&c, r.parent, r.name).await?;
            Ok(pb::ParentsReply { parent: dir_after(&s.volume, &c, r.parent), new_parent: None })
        })
        .await
    }

    async fn rm_dir(&self, req: Request<pb::NameRequest>) -> R<pb::ParentsReply> {
        self.call("rmdir", async {
            let r = req.into_inner();
            let (s, c) = self.srv.session(r.ctx.as_ref())?;
            s.volume.rmdir(&c, r.parent, r.name).await?;
            Ok(pb::ParentsReply { parent: dir_after(&s.volume, &c, r.parent), new_parent: None })
        })
        .await
    }

    async fn link(&self, req: Request<pb::LinkRequest>) -> R<pb::EntryReply> {
        self.call("link", async {
            let r = req.into_inner();
            let (s, c) = self.srv.session(r.ctx.as_ref())?;
            let e = entry(&s.volume.link(&c, r.ino, r.new_parent, r.new_name).await?);
            Ok(pb::EntryReply { parent: dir_after(&s.volume, &c, r.new_parent), ..e })
        })
        .await
    }

    async fn rename(&self, req: Request<pb::RenameRequest>) -> R<pb::ParentsReply> {
        self.call("rename", async {
            let r = req.into_inner();
            let (s, c) = self.srv.session(r.ctx.as_ref())?;
            let (parent, new_parent) = (r.parent, r.new_parent);
            s.volume.rename(&c, r).await?;
            Ok(pb::ParentsReply {
                parent: dir_after(&s.volume, &c, parent),
                new_parent: dir_after(&s.volume, &c, new_parent),
            })
        })
        .await
    }

    async fn read_dir(&self, req: Request<pb::ReadDirRequest>) -> R<pb::ReadDirReply> {
        self.call("readdir", async {
            let r = req.into_inner();
            let (s, c) = self.srv.session(r.ctx.as_ref())?;
            let (entries, eof) = s.volume.settled(|| s.volume.readdir(&c, r.ino, r.cookie, r.limit, r.plus)).await?;
            Ok(pb::ReadDirReply { entries, eof })
        })
        .await
    }

    async fn stat_fs(&self, req: Request<pb::InodeRequest>) -> R<pb::StatFsReply> {
        self.call("statfs", async {
            let r = req.into_inner();
            let (s, c) = self.srv.session(r.ctx.as_ref())?;
            s.volume.settled(|| s.volume.statfs(&c, r.ino)).await
        })
        .await
    }

    async fn get_xattr(&self, req: Request<pb::XattrRequest>) -> R<pb::XattrReply> {
        self.call("getxattr", async {
            let r = req.into_inner();
            let (s, c) = self.srv.session(r.ctx.as_ref())?;
            Ok(pb::XattrReply { value: s.volume.settled(|| s.volume.getxattr(&c, r.ino, &r.name)).await? })
        })
        .await
    }

    async fn set_xattr(&self, req: Request<pb::SetXattrRequest>) -> R<pb::Empty> {
        self.call("setxattr", async {
            let r = req.into_inner();
            let (s, c) = self.srv.session(r.ctx.as_ref())?;
            s.volume.setxattr(&c, r).await?;
            Ok(pb::Empty {})
        })
        .await
    }

    async fn list_xattr(&self, req: Request<pb::InodeRequest>) -> R<pb::ListXattrReply> {
        self.call("listxattr", async {
            let r = req.into_inner();
            let (s, c) = self.srv.session(r.ctx.as_ref())?;
            Ok(pb::ListXattrReply { names: s.volume.settled(|| s.volume.listxattr(&c, r.ino)).await? })
        })
        .await
    }

    async fn remove_xattr(&self, req: Request<pb::XattrRequest>) -> R<pb::Empty> {
        self.call("removexattr", async {
            let r = req.into_inner();
            let (s, c) = self.srv.session(r.ctx.as_ref())?;
            s.volume.removexattr(&c, r.ino, r.name).await?;
            Ok(pb::Empty {})
        })
        .await
    }

    async fn create(&self, req: Request<pb::MkNodRequest>) -> R<pb::CreateReply> {
        self.call("create", async {
            let r = req.into_inner();
            let (s, c) = self.srv.session(r.ctx.as_ref())?;
            let parent = r.parent;
            let cr = s.volume.create_file(&c, r).await?;
            Ok(pb::CreateReply {
                attr: Some(*attr(&cr.inode)),
                generation: cr.inode.generation,
                open_id: cr.open_id,
                created: cr.created,
                quota_limited: s.volume.quota_limited(&cr.inode),
                parent: dir_after(&s.volume, &c, parent),
            })
        })
        .await
    }

    async fn open(&self, req: Request<pb::OpenRequest>) -> R<pb::OpenReply> {
        self.call("open", async {
            let r = req.into_inner();
            let (s, c) = self.srv.session(r.ctx.as_ref())?;
            let (open_id, inode) = s.volume.open_file(&c, r.ino, r.flags).await?;
            Ok(pb::OpenReply { open_id, attr: Some(*attr(&inode)), quota_limited: s.volume.quota_limited(&inode) })
        })
        .await
    }

    async fn release(&self, req: Request<pb::ReleaseRequest>) -> R<pb::Empty> {
        self.call("release", async {
            let r = req.into_inner();
            let (s, c) = self.srv.session(r.ctx.as_ref())?;
            s.volume.release(&c, r.open_id, r.lock_owners).await?;
            Ok(pb::Empty {})
        })
        .await
    }

    async fn get_blocks(&self, req: Request<pb::GetBlocksRequest>) -> R<pb::GetBlocksReply> {
        self.call("get_blocks", async {
            let r = req.into_inner();
            let (s, c) = self.srv.session(r.ctx.as_ref())?;
            let (blocks, inode) = s.volume.settled(|| s.volume.get_blocks(&c, r.ino, r.first_index, r.count)).await?;
            Ok(pb::GetBlocksReply { blocks, attr: Some(*attr(&inode)) })
        })
        .await
    }

    async fn allocate_blocks(&self, req: Request<pb::AllocateBlocksRequest>) -> R<pb::AllocateBlocksReply> {
        self.call("allocate_blocks", async {
            let r = req.into_inner();
            let (s, c) = self.srv.session(r.ctx.as_ref())?;
            Ok(pb::AllocateBlocksReply { ids: s.volume.allocate_blocks(&c, r.count).await? })
        })
        .await
    }

    async fn commit_blocks(&self, req: Request<pb::CommitBlocksRequest>) -> R<pb::CommitBlocksReply> {
        self.call("commit_blocks", async {
            let r = req.into_inner();
            let (s, c) = self.srv.session(r.ctx.as_ref())?;
            let (inode, blocks) = s.volume.commit_blocks(&c, r).await?;
            Ok(pb::CommitBlocksReply { attr: Some(*attr(&inode)), blocks })
        })
        .await
    }

    async fn reserve(&self, req: Request<pb::ReserveRequest>) -> R<pb::Empty> {
        self.call("reserve", async {
            let r = req.into_inner();
            let (s, c) = self.srv.session(r.ctx.as_ref())?;
            s.volume.settled(|| s.volume.reserve(&c, r.ino, r.bytes)).await?;
            Ok(pb::Empty {})
        })
        .await
    }

    async fn sync(&self, req: Request<pb::Context>) -> R<pb::Empty> {
        self.call("sync", async {
            let (s, _) = self.srv.session(Some(req.get_ref()))?;
            s.volume.writer.sync().await?;
            Ok(pb::Empty {})
        })
        .await
    }

    type WatchStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

    async fn watch(&self, req: Request<pb::Context>) -> R<Self::WatchStream> {
        self.call("watch", async {
            let (s, _) = self.srv.session(Some(req.get_ref()))?;
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            *s.events.lock() = Some(tx);
            let stream: Self::WatchStream = Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(rx));
            Ok(stream)
        })
        .await
    }

    async fn delegate(&self, req: Request<pb::DelegateRequest>) -> R<pb::DelegateReply> {
        self.call("delegate", async {
            let r = req.into_inner();
            let (s, c) = self.srv.session(r.ctx.as_ref())?;
            let events = s.events.lock().clone().filter(|e| !e.is_closed()).ok_or_else(|| {
                MetaError::fs(libc::EPERM, "a delegation needs the session's Watch stream open (to be recalled)")
            })?;
            s.volume.delegate(&c, r.dir, events).await
        })
        .await
    }

    async fn apply(&self, req: Request<pb::ApplyRequest>) -> R<pb::ApplyReply> {
        self.call("apply", async {
            let r = req.into_inner();
            let (s, c) = self.srv.session(r.ctx.as_ref())?;
            let mut creators = Vec::with_capacity(r.creates.len());
            for op in &r.creates {
                let ctx = op
                    .ctx
                    .as_ref()
                    .ok_or_else(|| MetaError::Protocol("a delegated create without a context".into()))?;
                if op.open_ids.len() != op.open_flags.len() {
                    return Err(MetaError::Protocol("a delegated create's open ids and flags differ in number".into()));
                }
                creators.push(s.caller(ctx));
            }
            s.volume.apply(&c, creators, r).await
        })
        .await
    }

    async fn get_lock(&self, req: Request<pb::LockRequest>) -> R<pb::GetLockReply> {
        self.call("getlk", async {
            let r = req.into_inner();
            let (s, c) = self.srv.session(r.ctx.as_ref())?;
            s.volume.settled(|| s.volume.getattr(&c, r.ino)).await?;
            let want = lock_of(&c, &r)?;
            Ok(match s.volume.locks.test(r.ino, &want) {
                Some(l) => pb::GetLockReply {
                    r#type: if l.write { pb::LockType::Write } else { pb::LockType::Read } as i32,
                    start: l.start,
                    end: l.end,
                    pid: l.pid,
                },
                None => pb::GetLockReply { r#type: pb::LockType::Unlock as i32, ..Default::default() },
            })
        })
        .await
    }

    async fn set_lock(&self, req: Request<pb::LockRequest>) -> R<pb::Empty> {
        self.call("setlk", async {
            let r = req.into_inner();
            let (s, c) = self.srv.session(r.ctx.as_ref())?;
            s.volume.settled(|| s.volume.getattr(&c, r.ino)).await?;
            let want = lock_of(&c, &r)?;
            let unlock = r.r#type() == pb::LockType::Unlock;
            let writer = s.volume.writer.clone();
            let outcome =
                s.volume.locks.set(r.ino, want, unlock, r.wait, &mut |ino, list| persist_locks(&writer, ino, list));
            let m = &self.srv.metrics.lock_requests;
            match outcome {
                SetOutcome::Done => {
                    m.get_or_create(&LockLabels { result: "granted" }).inc();
                    Ok(pb::Empty {})
                }
                SetOutcome::Conflict(l) => {
                    m.get_or_create(&LockLabels { result: "conflict" }).inc();
                    Err(MetaError::fs(
                        libc::EAGAIN,
                        format!("inode {} bytes {}..={} are locked by pid {}", r.ino, l.start, l.end, l.pid),
                    ))
                }
                SetOutcome::Wait(w) => {
                    // Dropping this future (the client cancelled) drops the waiter, withdrawing it.
                    let mut cancelled = CountOnDrop(Some(m.get_or_create(&LockLabels { result: "cancelled" }).clone()));
                    w.granted().await;
                    cancelled.0 = None;
                    m.get_or_create(&LockLabels { result: "waited" }).inc();
                    Ok(pb::Empty {})
                }
            }
        })
        .await
    }
}

/// Increments a counter when dropped (a lock wait that ended without a grant).
struct CountOnDrop(Option<prometheus_client::metrics::counter::Counter>);

impl Drop for CountOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.inc();
        }
    }
}

fn lock_of(c: &crate::server::access::Caller, r: &pb::LockRequest) -> MetaResult<Lock> {
    let kind = r.kind();
    if kind == pb::LockKind::Unspecified {
        return Err(MetaError::fs(libc::EINVAL, "lock kind unspecified (posix or flock)"));
    }
    if r.r#type() == pb::LockType::Unspecified {
        return Err(MetaError::fs(libc::EINVAL, "lock type unspecified (read, write or unlock)"));
    }
    if r.start > r.end {
        return Err(MetaError::fs(libc::EINVAL, format!("lock range {}..={} is empty", r.start, r.end)));
    }
    Ok(Lock {
        session: c.session,
        owner: r.owner,
        kind,
        write: r.r#type() == pb::LockType::Write,
        start: r.start,
        end: r.end,
        pid: c.pid,
        open_id: r.open_id,
    })
}
