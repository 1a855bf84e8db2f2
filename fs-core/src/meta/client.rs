//! Clients of the metadata server: the TLS channel (one persistent HTTP/2 connection that
//! reconnects by itself), the session a mount holds, and the admin client.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::RwLock;
use tonic::transport::{Channel, Endpoint};

use super::error::MetaError;
use super::service::ACCOUNT_TOKEN_KEY;
use crate::proto::{PROTOCOL_VERSION, pb};
use crate::tls::{ClientTrust, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("metadata server address {0:?}: give HOST:PORT")]
    Address(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("connecting to the metadata server at {addr}: {source}; is it running, and is the address right?")]
    Connect { addr: String, source: tonic::transport::Error },
    #[error(transparent)]
    Meta(#[from] MetaError),
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> ClientError {
        ClientError::Meta(MetaError::from_status(&s))
    }
}

/// Opens a TLS channel to `addr` (`HOST:PORT`). The channel reconnects on its own when the
/// server goes away and comes back.
///
/// `outage`: once connected, how long a reconnect keeps trying while the server cannot be reached
/// (a restart, a rescheduled pod) before the requests waiting for it fail. Requests wait instead of
/// failing, and none is sent twice: they are sent only once the new connection is up. A request
/// that was already on the wire when the connection broke still fails. The first connection never
/// waits: a wrong address or a server not started is reported at once.
pub async fn connect(addr: &str, trust: &ClientTrust, outage: Duration) -> Result<Channel, ClientError> {
    let (host, _) = addr.rsplit_once(':').ok_or_else(|| ClientError::Address(addr.to_string()))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let server_name =
        rustls::pki_types::ServerName::try_from(host).map_err(|_| ClientError::Address(addr.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(trust.client_config()?);
    // No connect_timeout on the endpoint: it would bound the whole wait below. Each attempt has
    // its own.
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|_| ClientError::Address(addr.to_string()))?
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    let target = addr.to_string();
    let connected = Arc::new(AtomicBool::new(false));
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let (tls, name, target, connected) = (tls.clone(), server_name.clone(), target.clone(), connected.clone());
        async move {
            let attempt = || async {
                let tcp = tokio::net::TcpStream::connect(&target).await?;
                tcp.set_nodelay(true)?;
                tls.connect(name.clone(), tcp).await
            };
            let wait = if connected.load(Ordering::Relaxed) { outage } else { Duration::ZERO };
            let deadline = tokio::time::Instant::now() + wait;
            let mut pause = Duration::from_millis(50);
            let mut logged = false;
            loop {
                let error = match tokio::time::timeout(CONNECT_ATTEMPT, attempt()).await {
                    Ok(Ok(stream)) => {
                        if logged {
                            tracing::info!(server = %target, "the metadata server is reachable again");
                        }
                        connected.store(true, Ordering::Relaxed);
                        return Ok(hyper_util::rt::TokioIo::new(stream));
                    }
                    Ok(Err(e)) => e,
                    Err(_) => std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no TCP and TLS connection within {CONNECT_ATTEMPT:?}"),
                    ),
                };
                // A certificate that does not verify is a configuration error: no waiting.
                if error.kind() == std::io::ErrorKind::InvalidData || tokio::time::Instant::now() + pause > deadline {
                    return Err(error);
                }
                if !logged {
                    tracing::warn!(server = %target, %error, wait_secs = wait.as_secs_f64(),
                        "the metadata server cannot be reached; requests wait for it (mount option meta_wait)");
                    logged = true;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    });
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|source| ClientError::Connect { addr: addr.to_string(), source })
}

/// How long one TCP + TLS connection attempt may take.
const CONNECT_ATTEMPT: Duration = Duration::from_secs(5);

/// A session on one volume.
pub struct Session {
    pub rpc: pb::meta_client::MetaClient<Channel>,
    id: RwLock<Vec<u8>>,
    pub reply: pb::OpenSessionReply,
    volume: String,
    token: String,
    client: String,
}

impl Session {
    /// Opens a session with a volume token.
    pub async fn open(channel: Channel, volume: &str, token: &str, client: &str) -> Result<Arc<Session>, ClientError> {
        let mut rpc = pb::meta_client::MetaClient::new(channel).max_decoding_message_size(super::service::MAX_MESSAGE);
        let reply = rpc
            .open_session(pb::OpenSessionRequest {
                protocol_version: PROTOCOL_VERSION as i32,
                volume: volume.to_string(),
                token: token.to_string(),
                client: client.to_string(),
                resume: Vec::new(),
            })
            .await?
            .into_inner();
        Ok(Arc::new(Session {
            rpc,
            id: RwLock::new(reply.session.clone()),
            reply,
            volume: volume.to_string(),
            token: token.to_string(),
            client: client.to_string(),
        }))
    }

    /// The context of a request by a process with these credentials.
    pub fn ctx(&self, uid: u32, gid: u32, pid: u32) -> pb::Context {
        pb::Context { session: self.id.read().clone(), uid, gid, pid, groups: Vec::new() }
    }

    /// A root context (uid 0, gid 0).
    pub fn root(&self) -> pb::Context {
        self.ctx(0, 0, std::process::id())
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
                    Ok(_) => {}
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

/// The admin client: every call carries the account token.
pub type AdminClient =
    pb::admin_client::AdminClient<tonic::service::interceptor::InterceptedService<Channel, AccountToken>>;

#[derive(Clone)]
pub struct AccountToken(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for AccountToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert(ACCOUNT_TOKEN_KEY, self.0.clone());
        Ok(req)
    }
}

pub fn admin_client(channel: Channel, account_token: &str) -> Result<AdminClient, ClientError> {
    let v = account_token.trim().parse().map_err(|_| {
        MetaError::Unauthenticated("the account token contains characters not allowed in a header".into())
    })?;
    Ok(pb::admin_client::AdminClient::with_interceptor(channel, AccountToken(v)))
}
