//! The session a mount holds on one volume: opened with a volume token, kept alive by a
//! heartbeat, resumed after a reconnect or a server restart, and resumed by id by a process that
//! adopts a live mount.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{ClientError, MetaChannel, MetaRpc};
use crate::wire::{MAX_MESSAGE, PROTOCOL_VERSION, pb};

/// A session on one volume.
pub struct Session {
    pub rpc: MetaRpc,
    id: RwLock<Vec<u8>>,
    /// The number the next request carries (see [`Session::ctx`]).
    next_request: AtomicU64,
    pub reply: pb::OpenSessionReply,
    volume: String,
    token: String,
    client: String,
    /// The volume's block-store spec as the server last said it (heartbeats carry it).
    backend: tokio::sync::watch::Sender<String>,
}

impl Session {
    /// Opens a session with a volume token.
    pub async fn open(
        channel: impl Into<MetaChannel>,
        volume: &str,
        token: &str,
        client: &str,
    ) -> Result<Arc<Session>, ClientError> {
        Self::opening(channel, volume, token, client, Vec::new()).await
    }

    /// Resumes session `id`, which another process held (a mount handed over): its open files
    /// and locks are this session's. Fails when the server no longer has it.
    pub async fn resume_id(
        channel: impl Into<MetaChannel>,
        volume: &str,
        token: &str,
        client: &str,
        id: &[u8],
    ) -> Result<Arc<Session>, ClientError> {
        let s = Self::opening(channel, volume, token, client, id.to_vec()).await?;
        if !s.reply.resumed {
            // The server made a new session instead: close it, nothing of the old one is there.
            let _ = s.close().await;
            return Err(ClientError::SessionLost(hex::encode(id)));
        }
        Ok(s)
    }

    async fn opening(
        channel: impl Into<MetaChannel>,
        volume: &str,
        token: &str,
        client: &str,
        resume: Vec<u8>,
    ) -> Result<Arc<Session>, ClientError> {
        let mut rpc = pb::meta_client::MetaClient::new(channel.into()).max_decoding_message_size(MAX_MESSAGE);
        let reply = rpc
            .open_session(pb::OpenSessionRequest {
                protocol_version: PROTOCOL_VERSION as i32,
                volume: volume.to_string(),
                token: token.to_string(),
                client: client.to_string(),
                resume,
            })
            .await?
            .into_inner();
        let backend =
            tokio::sync::watch::Sender::new(reply.volume.as_ref().map(|v| v.backend_json.clone()).unwrap_or_default());
        Ok(Arc::new(Session {
            backend,
            rpc,
            id: RwLock::new(reply.session.clone()),
            // Numbers only grow, across the processes that hold one session in turn (a handover):
            // each starts from the clock, in nanoseconds, far past any count before it.
            next_request: AtomicU64::new(
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64),
            ),
            reply,
            volume: volume.to_string(),
            token: token.to_string(),
            client: client.to_string(),
        }))
    }

    /// The context of a request by a process with these credentials, under a number of its own
    /// (a retry of the request is recognised by it; [`MetaChannel`]).
    pub fn ctx(&self, uid: u32, gid: u32, pid: u32) -> pb::Context {
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        pb::Context { session: self.id.read().clone(), uid, gid, pid, groups: Vec::new(), request }
    }

    /// The context of a request under a number the caller chose (one that identifies it across
    /// processes, such as a kernel request's id): sent again under the same number, a change is
    /// answered from the server's record of the first, not applied twice.
    pub fn ctx_numbered(&self, uid: u32, gid: u32, pid: u32, request: u64) -> pb::Context {
        pb::Context { session: self.id.read().clone(), uid, gid, pid, groups: Vec::new(), request }
    }

    /// A root context (uid 0, gid 0).
    pub fn root(&self) -> pb::Context {
        self.ctx(0, 0, std::process::id())
    }

    /// The session's id as the server lists it (hex).
    pub fn id_hex(&self) -> String {
        hex::encode(&*self.id.read())
    }

    pub fn root_ino(&self) -> u64 {
        self.reply.root_ino
    }

    /// Resumes this session (after a reconnect or a server restart). Returns whether the server
    /// still had it; if not, a new session replaces it and its open files and locks are gone.
    pub async fn resume(&self) -> Result<bool, ClientError> {
        let resume = self.id.read().clone();
        let reply = self
            .rpc
            .clone()
            .open_session(pb::OpenSessionRequest {
                protocol_version: PROTOCOL_VERSION as i32,
                volume: self.volume.clone(),
                token: self.token.clone(),
                client: self.client.clone(),
                resume,
            })
            .await?
            .into_inner();
        *self.id.write() = reply.session.clone();
        Ok(reply.resumed)
    }

    /// The volume's block-store spec (JSON), changing when an admin changes it on the server
    /// (rotated credentials); seen at the next heartbeat.
    pub fn backend_spec(&self) -> tokio::sync::watch::Receiver<String> {
        self.backend.subscribe()
    }

    /// Keeps the session alive: a heartbeat every third of the lease, resuming after errors.
    pub fn spawn_heartbeat(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = Arc::downgrade(self);
        let every = Duration::from_millis((self.reply.lease_ms / 3).max(100) as u64);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(s) = me.upgrade() else { return };
                let ctx = s.root();
                match s.rpc.clone().heartbeat(ctx).await {
                    Ok(r) => {
                        let spec = r.into_inner().backend_json;
                        if !spec.is_empty() {
                            s.backend.send_if_modified(|b| {
                                let changed = *b != spec;
                                *b = spec;
                                changed
                            });
                        }
                    }
                    Err(st) if st.code() == tonic::Code::Unauthenticated => match s.resume().await {
                        Ok(resumed) => {
                            tracing::warn!(resumed, "the metadata server had lost this session; reopened it")
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "reopening the session failed; retrying")
                        }
                    },
                    Err(st) => {
                        tracing::debug!(error = %st, "heartbeat failed; the channel reconnects")
                    }
                }
            }
        })
    }

    /// Waits until the server answers this session's heartbeat (after a restart or an outage),
    /// resuming the session if the server lost it. Fails after `timeout`.
    #[cfg(any(test, feature = "testkit"))]
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), ClientError> {
        let start = std::time::Instant::now();
        loop {
            match self.rpc.clone().heartbeat(self.root()).await {
                Ok(_) => return Ok(()),
                Err(st) if st.code() == tonic::Code::Unauthenticated => {
                    self.resume().await?;
                    return Ok(());
                }
                Err(st) if start.elapsed() > timeout => return Err(st.into()),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    pub async fn close(&self) -> Result<(), ClientError> {
        self.rpc.clone().close_session(self.root()).await?;
        Ok(())
    }
}
