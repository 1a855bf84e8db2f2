//! The TLS channel to a metadata server: one persistent HTTP/2 connection that reconnects by
//! itself, and waits for a server that went away instead of failing requests at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::tls::{ClientTrust, TlsError};
use crate::wire::MetaError;

/// What a call to the metadata server can fail with. The messages say what failed; a refusal of
/// the server keeps its errno ([`MetaError::errno`]).
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
    #[error("the metadata server no longer has session {0} (its lease ran out or the token was revoked)")]
    SessionLost(String),
    #[error("{0}")]
    BadInput(String),
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
    let host =
        trust.server_name.clone().unwrap_or_else(|| host.trim_start_matches('[').trim_end_matches(']').to_string());
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

/// A session's channel: a request whose connection broke before its reply came is sent again,
/// for up to `wait` (the mount's `meta_wait`), once the channel has reconnected. Every request of a
/// session carries its own number ([`super::Session::ctx`]), so a change the server applied before
/// the break is answered from the reply it kept, not applied twice (`server::store::replay`); a
/// read is simply read again. Requests are small unary messages: each is held until answered.
#[derive(Clone)]
pub struct MetaChannel {
    inner: Channel,
    wait: Duration,
}

impl MetaChannel {
    pub fn new(inner: Channel, wait: Duration) -> MetaChannel {
        MetaChannel { inner, wait }
    }
}

impl From<Channel> for MetaChannel {
    /// No retries: an error at once.
    fn from(inner: Channel) -> MetaChannel {
        MetaChannel::new(inner, Duration::ZERO)
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<http::Request<tonic::body::Body>> for MetaChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        tower::Service::poll_ready(&mut self.inner, cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        // The clone that was made ready serves this call; a fresh clone stays for the next.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let wait = self.wait;
        Box::pin(async move {
            use http_body_util::BodyExt;
            use tower::ServiceExt;
            let (parts, body) = req.into_parts();
            let body = body.collect().await.map_err(|s| Box::new(s) as BoxError)?.to_bytes();
            let attempt = |parts: &http::request::Parts| {
                let mut r = http::Request::new(tonic::body::Body::new(http_body_util::Full::new(body.clone())));
                *r.method_mut() = parts.method.clone();
                *r.uri_mut() = parts.uri.clone();
                *r.version_mut() = parts.version;
                *r.headers_mut() = parts.headers.clone();
                r
            };
            // One deadline for the whole request: each attempt's reconnect waits as well.
            let start = std::time::Instant::now();
            let mut broke = false;
            let mut pause = Duration::from_millis(50);
            loop {
                let sent = match inner.ready().await {
                    Ok(ready) => ready.call(attempt(&parts)).await,
                    Err(e) => Err(e),
                };
                let error = match sent {
                    Ok(r) => {
                        if broke {
                            tracing::info!(path = %parts.uri.path(), "a request the broken connection took was sent again and answered");
                        }
                        return Ok(r);
                    }
                    Err(e) => e,
                };
                if start.elapsed() + pause > wait {
                    return Err(error.into());
                }
                if !broke {
                    broke = true;
                    tracing::warn!(path = %parts.uri.path(), %error, "the connection to the metadata server broke during a request; sending it again once reconnected");
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        })
    }
}
