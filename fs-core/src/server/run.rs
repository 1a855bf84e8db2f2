//! Running the metadata server: [`start`] opens the data, binds the gRPC (TLS) and plain-HTTP
//! ports and serves until [`Running::stop`]; the background work (lease expiry, certificate
//! reload, scheduled garbage collection) runs beside.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::config::ServerConfig;
use super::grpc::MetaService;
use super::http;
use super::state::MetaServer;
use crate::tls::ServerCert;
use crate::wire::{MAX_MESSAGE, MetaError, pb};

/// What stops a metadata server from starting. Each message says what failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("opening the metadata server's data in {}: {source}", dir.display())]
    Open { dir: std::path::PathBuf, source: MetaError },
    #[error("accepting the admin token file: {0}")]
    AdminToken(MetaError),
    #[error("loading the server certificate: {0}")]
    Certificate(#[from] crate::tls::TlsError),
    #[error("binding {addr}: {source} (another server running there? give another address)")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// A running server: where it listens and how to stop it.
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// SHA-256 of the server certificate (what clients pin with `--fingerprint`).
    pub fingerprint: String,
    pub(crate) server: Arc<MetaServer>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops serving, makes every change durable and closes the databases (waiting a few
    /// seconds for requests still in flight to let go of them).
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        self.server.sessions.write().clear();
        self.server.volumes.write().clear();
        let start = Instant::now();
        while Arc::strong_count(&self.server) > 1 && start.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if Arc::strong_count(&self.server) > 1 {
            tracing::warn!("requests still hold the server after 5 s; its databases close when they end");
        }
    }
}

/// Starts the metadata server: binds both ports, starts the background tasks and returns.
pub async fn start(cfg: ServerConfig) -> Result<Running, ServerError> {
    let server = tokio::task::block_in_place(|| MetaServer::open(cfg.clone()))
        .map_err(|source| ServerError::Open { dir: cfg.data_dir.clone(), source })?;
    server.bootstrap_admin_token().await.map_err(ServerError::AdminToken)?;
    let files = cfg.tls_cert.clone().map(|t| (t.cert, t.key));
    let cert = ServerCert::load_or_generate(files, &cfg.data_dir.join("tls"), &cfg.tls_names)?;
    let fingerprint = cert.fingerprint();
    let bind = |addr| async move {
        let l = tokio::net::TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr, source })?;
        let local = l.local_addr().map_err(|source| ServerError::Bind { addr, source })?;
        Ok::<_, ServerError>((l, local))
    };
    let (grpc, grpc_addr) = bind(cfg.listen).await?;
    let (http, http_addr) = bind(cfg.http_listen).await?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(server.clone(), cert, grpc, http, stop_rx));
    server.ready.store(true, Ordering::SeqCst);
    tracing::info!(%grpc_addr, %http_addr, %fingerprint, data_dir = %cfg.data_dir.display(), sync = cfg.sync, "metadata server ready");
    Ok(Running { grpc_addr, http_addr, fingerprint, server, stop: Some(stop_tx), task: Some(task) })
}

/// Runs the periodic work until `stop` resolves: lease expiry, certificate reload, GC.
pub async fn background(server: Arc<MetaServer>, cert: Arc<ServerCert>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last_cert = Instant::now();
    let mut last_gc = Instant::now();
    let mut last_sweep = Instant::now();
    loop {
        tick.tick().await;
        server.expire_sessions().await;
        if server.trash_pending.swap(false, std::sync::atomic::Ordering::SeqCst) && server.empty_trash().await {
            server.trash_pending.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        if last_sweep.elapsed() > Duration::from_secs(60) {
            last_sweep = Instant::now();
            for v in server.volumes() {
                match v.change(false, crate::server::store::replay::sweep).await {
                    Ok(n) => {
                        tracing::debug!(volume = %v.info().name, deleted = n, "old replies kept for retries deleted")
                    }
                    Err(e) => tracing::warn!(volume = %v.info().name, error = %e, "deleting old replies failed"),
                }
            }
        }
        if last_cert.elapsed() > Duration::from_secs(2) {
            last_cert = Instant::now();
            cert.reload_if_changed();
        }
        if !server.cfg.gc_interval.is_zero() && last_gc.elapsed() > server.cfg.gc_interval {
            last_gc = Instant::now();
            for v in server.volumes() {
                let name = v.info().name;
                if let Err(e) = server.gc(&name, false).await {
                    tracing::warn!(volume = %name, error = %e, "scheduled garbage collection failed");
                }
            }
        }
    }
}

/// Serves gRPC over TLS on `grpc` and the plain-HTTP endpoints on `http` until `stop` fires,
/// then makes every volume's changes durable.
async fn serve(
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

    let router = http::router(srv.clone());
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
