//! The gRPC server on the Unix socket of `--endpoint` (`unix:///csi/csi.sock` or a path), as
//! kubelet and the sidecars reach a CSI driver: Identity always, Controller and Node as the
//! process serves them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_stream::wrappers::UnixListenerStream;

use crate::controller::ControllerService;
use crate::csi::controller_server::ControllerServer;
use crate::csi::identity_server::IdentityServer;
use crate::csi::node_server::NodeServer;
use crate::identity::IdentityService;
use crate::node::NodeService;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("endpoint {0:?}: give unix:///PATH or an absolute path of a Unix socket")]
    Endpoint(String),
    #[error("listening on {path}: {source}; is another driver running there, or is the folder missing?")]
    Listen { path: PathBuf, source: std::io::Error },
    #[error("serving gRPC: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// The socket path of an endpoint (`unix:///PATH`, `unix:/PATH` or `/PATH`).
pub fn socket_path(endpoint: &str) -> Result<PathBuf, ServeError> {
    let path = endpoint.strip_prefix("unix://").or_else(|| endpoint.strip_prefix("unix:")).unwrap_or(endpoint);
    if path.starts_with('/') { Ok(PathBuf::from(path)) } else { Err(ServeError::Endpoint(endpoint.into())) }
}

/// What one process serves.
pub struct Services {
    pub controller: Option<ControllerService>,
    pub node: Option<Arc<NodeService>>,
}

/// Serves the driver on `path` until `shutdown` completes. A socket left by an earlier process is
/// replaced.
pub async fn serve(
    path: &Path,
    services: Services,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let listen = |source| ServeError::Listen { path: path.to_path_buf(), source };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(listen(e)),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(listen)?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(listen)?;
    let identity = IdentityService { controller: services.controller.is_some() };
    tracing::info!(
        socket = %path.display(),
        controller = services.controller.is_some(),
        node = services.node.is_some(),
        "stratusfs-csi serving"
    );
    tonic::transport::Server::builder()
        .add_service(IdentityServer::new(identity))
        .add_optional_service(services.controller.map(ControllerServer::new))
        .add_optional_service(services.node.map(NodeServer::new))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}

/// A gRPC channel to a driver's socket, as kubelet and the sidecars open one (the tests use it).
pub async fn connect(path: &Path) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    // The URI is not dialled: every connection is the socket.
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_name_unix_sockets() {
        assert_eq!(socket_path("unix:///csi/csi.sock").unwrap(), PathBuf::from("/csi/csi.sock"));
        assert_eq!(socket_path("unix:/csi/csi.sock").unwrap(), PathBuf::from("/csi/csi.sock"));
        assert_eq!(socket_path("/csi/csi.sock").unwrap(), PathBuf::from("/csi/csi.sock"));
        let e = socket_path("tcp://127.0.0.1:10000").unwrap_err();
        assert!(e.to_string().contains("unix:///PATH"), "{e}");
    }
}
