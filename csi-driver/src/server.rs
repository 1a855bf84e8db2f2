//! The gRPC server on the Unix socket of `--endpoint` (`unix:///csi/csi.sock` or a path), as
//! kubelet and the sidecars reach a CSI driver.

use std::path::{Path, PathBuf};

use tokio_stream::wrappers::UnixListenerStream;

use crate::csi::identity_server::IdentityServer;
use crate::identity::IdentityService;

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

/// Serves the driver on `path` until `shutdown` completes. A socket left by an earlier process is
/// replaced.
pub async fn serve(
    path: &Path,
    identity: IdentityService,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let listen = |source| ServeError::Listen { path: path.to_path_buf(), source };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(listen(e)),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(listen)?;
    tracing::info!(socket = %path.display(), controller = identity.controller, "stratusfs-csi serving");
    tonic::transport::Server::builder()
        .add_service(IdentityServer::new(identity))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
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
