//! gRPC on top of [`MetaServer`]: the `Meta` service a mount's session uses ([`meta`]) and the
//! `Admin` service ([`admin`]), each RPC timed, its error mapped to a status in one place.

mod admin;
mod meta;

use std::future::Future;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::server::access::Caller;
use crate::server::locks::{Lock, SetOutcome};
use crate::server::metrics::{LockLabels, OpLabels};
use crate::server::state::MetaServer;
use crate::server::store::tx::attr;
use crate::server::store::volume::{VolumeDb, persist_locks};
use crate::wire::error::{MetaError, MetaResult};
use crate::wire::{ACCOUNT_TOKEN_KEY, pb, rec};

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
