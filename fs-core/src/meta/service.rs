//! gRPC on top of [`MetaServer`]: the `Meta` and `Admin` services, the TLS listener, and the
//! plain-HTTP endpoints (`/metrics`, `/healthz`, `/readyz`).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::access::Caller;
use super::error::{MetaError, MetaResult};
use super::locks::{Lock, SetOutcome};
use super::metrics::{DelegationLabels, LockLabels, OpLabels, VolumeLabels};
use super::server::{MetaServer, background};
use super::tx::attr;
use super::volume::{VolumeDb, persist_locks};
use crate::proto::{pb, rec};
use crate::tls::ServerCert;

/// Largest request the server decodes (a commit of many block changes, a large xattr).
pub const MAX_MESSAGE: usize = 4 * 1024 * 1024;
/// gRPC metadata key of the account token on admin calls.
pub const ACCOUNT_TOKEN_KEY: &str = "x-stratusfs-account-token";

#[derive(Clone)]
pub struct MetaService {
    srv: Arc<MetaServer>,
}

type R<T> = Result<Response<T>, Status>;

impl MetaService {
    pub fn new(srv: Arc<MetaServer>) -> MetaService {
        MetaService { srv }
    }

    /// Runs one RPC: times it, maps its error to a status (errno in metadata) and logs internal
    /// errors.
    async fn call<T>(&self, op: &'static str, f: impl Future<Output = MetaResult<T>>) -> R<T> {
        let _t = self.srv.metrics.time(op);
        match f.await {
            Ok(v) => Ok(Response::new(v)),
            Err(e) => {
                self.srv.metrics.rpc_errors.get_or_create(&OpLabels { op }).inc();
                match &e {
                    MetaError::Internal(_) => tracing::error!(op, error = %e, "request failed"),
                    MetaError::Unauthenticated(_) => {
                        tracing::warn!(op, error = %e, "request refused")
                    }
                    _ => tracing::debug!(op, error = %e, "request failed"),
                }
                Err(e.into())
            }
        }
    }

    fn admin<T>(&self, req: &Request<T>) -> MetaResult<()> {
        let token = req.metadata().get(ACCOUNT_TOKEN_KEY).and_then(|v| v.to_str().ok()).ok_or_else(|| {
            MetaError::Unauthenticated(format!("admin calls need an account token in {ACCOUNT_TOKEN_KEY}"))
        })?;
        self.srv.check_account_token(token)
    }
}

fn entry(inode: &rec::Inode) -> pb::EntryReply {
    pb::EntryReply { attr: Some(*attr(inode)), generation: inode.generation, parent: None }
}

/// A directory's attributes right after a change to it, for the reply (the client answers the
/// kernel's next GETATTR of it from them). Read after the change, so possibly later than it; its
/// change counter orders it. `None` if it cannot be read (the change itself succeeded).
fn dir_after(v: &VolumeDb, c: &Caller, dir: u64) -> Option<pb::Attr> {
    v.getattr(c, dir).ok().map(|i| *attr(&i))
}

fn attr_reply(inode: &rec::Inode) -> pb::AttrReply {
    pb::AttrReply { attr: Some(*attr(inode)) }
}

#[tonic::async_trait]
impl pb::meta_server::Meta for MetaService {
    async fn open_session(&self, req: Request<pb::OpenSessionRequest>) -> R<pb::OpenSessionReply> {
        self.call("open_session", self.srv.open_session(req.into_inner())).await
    }

    async fn heartbeat(&self, req: Request<pb::Context>) -> R<pb::HeartbeatReply> {
        self.call("heartbeat", async {
            self.srv.session(Some(req.get_ref()))?;
            Ok(pb::HeartbeatReply { lease_ms: self.srv.cfg.lease.as_millis() as u32 })
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
                SetOutcome::Done(_) => {
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

fn lock_of(c: &super::access::Caller, r: &pb::LockRequest) -> MetaResult<Lock> {
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

#[tonic::async_trait]
impl pb::admin_server::Admin for MetaService {
    async fn create_volume(&self, req: Request<pb::CreateVolumeRequest>) -> R<pb::VolumeInfo> {
        self.call("admin_create_volume", async {
            self.admin(&req)?;
            self.srv.create_volume(req.into_inner()).await
        })
        .await
    }

    async fn list_volumes(&self, req: Request<pb::Empty>) -> R<pb::ListVolumesReply> {
        self.call("admin_list_volumes", async {
            self.admin(&req)?;
            let mut volumes: Vec<pb::VolumeInfo> = self.srv.volumes().iter().map(|v| v.info()).collect();
            volumes.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(pb::ListVolumesReply { volumes })
        })
        .await
    }

    async fn delete_volume(&self, req: Request<pb::VolumeRef>) -> R<pb::Empty> {
        self.call("admin_delete_volume", async {
            self.admin(&req)?;
            self.srv.delete_volume(&req.get_ref().volume).await?;
            Ok(pb::Empty {})
        })
        .await
    }

    async fn update_volume(&self, req: Request<pb::UpdateVolumeRequest>) -> R<pb::VolumeInfo> {
        self.call("admin_update_volume", async {
            self.admin(&req)?;
            self.srv.update_volume(req.into_inner()).await
        })
        .await
    }

    async fn create_token(&self, req: Request<pb::CreateTokenRequest>) -> R<pb::CreateTokenReply> {
        self.call("admin_create_token", async {
            self.admin(&req)?;
            self.srv.create_token(req.into_inner()).await
        })
        .await
    }

    async fn list_tokens(&self, req: Request<pb::VolumeRef>) -> R<pb::ListTokensReply> {
        self.call("admin_list_tokens", async {
            self.admin(&req)?;
            Ok(pb::ListTokensReply { tokens: self.srv.list_tokens(&req.get_ref().volume)? })
        })
        .await
    }

    async fn revoke_token(&self, req: Request<pb::RevokeTokenRequest>) -> R<pb::Empty> {
        self.call("admin_revoke_token", async {
            self.admin(&req)?;
            let r = req.into_inner();
            self.srv.revoke_token(&r.volume, &r.id).await?;
            Ok(pb::Empty {})
        })
        .await
    }

    async fn create_account_token(&self, req: Request<pb::CreateAccountTokenRequest>) -> R<pb::CreateTokenReply> {
        self.call("admin_create_account_token", async {
            self.admin(&req)?;
            self.srv.create_account_token(req.into_inner().comment).await
        })
        .await
    }

    async fn set_quota(&self, req: Request<pb::SetQuotaRequest>) -> R<pb::Empty> {
        self.call("admin_set_quota", async {
            self.admin(&req)?;
            self.srv.set_quota(req.into_inner()).await?;
            Ok(pb::Empty {})
        })
        .await
    }

    async fn usage(&self, req: Request<pb::VolumeRef>) -> R<pb::UsageReply> {
        self.call("admin_usage", async {
            self.admin(&req)?;
            self.srv.usage(&req.get_ref().volume)
        })
        .await
    }

    async fn gc(&self, req: Request<pb::GcRequest>) -> R<pb::GcReply> {
        self.call("admin_gc", async {
            self.admin(&req)?;
            let r = req.into_inner();
            self.srv.gc(&r.volume, r.dry_run).await
        })
        .await
    }
}

/// Serves gRPC over TLS on `grpc` and the plain-HTTP endpoints on `http` until `stop` fires,
/// then makes every volume's changes durable.
pub async fn serve(
    srv: Arc<MetaServer>,
    cert: Arc<ServerCert>,
    grpc: tokio::net::TcpListener,
    http: tokio::net::TcpListener,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(cert.server_config());
    let (conn_tx, conn_rx) = tokio::sync::mpsc::channel(64);
    let accept = tokio::spawn(async move {
        loop {
            let (tcp, peer) = match grpc.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), conn_tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok::<_, std::io::Error>(tls)).await;
                    }
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });

    let metrics_srv = srv.clone();
    let ready_srv = srv.clone();
    let router = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let srv = metrics_srv.clone();
                async move {
                    for v in srv.volumes() {
                        let l = VolumeLabels { volume: v.info().name };
                        srv.metrics.db_bytes.get_or_create(&l).set(v.file_size() as i64);
                        let st = &v.writer.stats;
                        srv.metrics.commits.get_or_create(&l).set(st.commits.load(Ordering::Relaxed) as i64);
                        srv.metrics.syncs.get_or_create(&l).set(st.syncs.load(Ordering::Relaxed) as i64);
                        for (event, n) in v.delegations.counts() {
                            let l = DelegationLabels { volume: l.volume.clone(), event };
                            srv.metrics.delegations.get_or_create(&l).set(n as i64);
                        }
                        srv.metrics
                            .sync_seconds
                            .get_or_create(&l)
                            .set(st.sync_micros.load(Ordering::Relaxed) as f64 / 1e6);
                    }
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        srv.metrics.encode(),
                    )
                }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let ready = ready_srv.ready.load(Ordering::SeqCst);
                async move {
                    if ready {
                        (axum::http::StatusCode::OK, "ready\n")
                    } else {
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "starting\n")
                    }
                }
            }),
        );
    let http_task = tokio::spawn(async move {
        if let Err(e) = axum::serve(http, router).await {
            tracing::error!(error = %e, "the HTTP endpoint stopped");
        }
    });
    let bg = tokio::spawn(background(srv.clone(), cert));

    let svc = MetaService::new(srv.clone());
    let (grace_tx, grace_rx) = tokio::sync::oneshot::channel::<()>();
    let grpc = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(pb::meta_server::MetaServer::new(svc.clone()).max_decoding_message_size(MAX_MESSAGE))
        .add_service(pb::admin_server::AdminServer::new(svc).max_decoding_message_size(MAX_MESSAGE))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::ReceiverStream::new(conn_rx), async {
            let _ = grace_rx.await;
        });
    let mut grpc = tokio::spawn(grpc);
    tokio::select! {
        r = &mut grpc => {
            if let Ok(Err(e)) = r {
                tracing::error!(error = %e, "the gRPC server stopped");
            }
        }
        _ = stop => {
            // Graceful shutdown waits for requests in flight; a lock wait may never end, so it
            // gets a few seconds.
            let _ = grace_tx.send(());
            if tokio::time::timeout(Duration::from_secs(3), &mut grpc).await.is_err() {
                grpc.abort();
                let _ = grpc.await;
            }
        }
    }
    srv.ready.store(false, Ordering::SeqCst);
    accept.abort();
    bg.abort();
    http_task.abort();
    for v in srv.volumes() {
        if let Err(e) = v.writer.sync().await {
            tracing::error!(volume = %v.info().name, error = %e, "final sync failed");
        }
    }
    tracing::info!("metadata server stopped");
}
