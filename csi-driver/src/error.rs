//! The one place errors become gRPC status codes, as the CSI spec lists them for each call.
//! Every message says what failed and, where there is one, what to do about it.

use fs_core::{ClientError, MountError};
use tonic::{Code, Status};

/// What a CSI call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CsiError {
    /// A field is missing or malformed (INVALID_ARGUMENT).
    #[error("{0}")]
    InvalidArgument(String),
    /// The volume (or what it names) does not exist (NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
    /// The name is taken by something incompatible with the request (ALREADY_EXISTS).
    #[error("{0}")]
    AlreadyExists(String),
    /// The credentials do not allow it (PERMISSION_DENIED).
    #[error("{0}")]
    PermissionDenied(String),
    /// The request is fine but the state does not allow it now (FAILED_PRECONDITION).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Out of space or inodes (RESOURCE_EXHAUSTED).
    #[error("{0}")]
    ResourceExhausted(String),
    /// A size the driver cannot give (OUT_OF_RANGE).
    #[error("{0}")]
    OutOfRange(String),
    /// Something needed cannot be reached now; the caller retries (UNAVAILABLE).
    #[error("{0}")]
    Unavailable(String),
    /// A starting node plugin could not take the node's sessions over from the one serving them
    /// (which goes on serving); the new one exits (UNAVAILABLE if it were ever answered).
    #[error("{0}")]
    HandoverRefused(String),
    /// The same volume is being worked on by another call (ABORTED, as the spec asks).
    #[error("{0}")]
    Aborted(String),
    /// A failure of the driver or the node (INTERNAL).
    #[error("{0}")]
    Internal(String),
}

impl CsiError {
    fn code(&self) -> Code {
        match self {
            CsiError::InvalidArgument(_) => Code::InvalidArgument,
            CsiError::NotFound(_) => Code::NotFound,
            CsiError::AlreadyExists(_) => Code::AlreadyExists,
            CsiError::PermissionDenied(_) => Code::PermissionDenied,
            CsiError::FailedPrecondition(_) => Code::FailedPrecondition,
            CsiError::ResourceExhausted(_) => Code::ResourceExhausted,
            CsiError::OutOfRange(_) => Code::OutOfRange,
            CsiError::Unavailable(_) | CsiError::HandoverRefused(_) => Code::Unavailable,
            CsiError::Aborted(_) => Code::Aborted,
            CsiError::Internal(_) => Code::Internal,
        }
    }

    /// A metadata server's answer (or its absence) while doing `what`.
    pub fn from_client(what: &str, e: ClientError) -> CsiError {
        let message = format!("{what}: {e}");
        match &e {
            ClientError::Address(_) | ClientError::BadInput(_) => CsiError::InvalidArgument(message),
            ClientError::Tls(_) => CsiError::FailedPrecondition(message),
            ClientError::Connect { .. } => CsiError::Unavailable(message),
            ClientError::SessionLost(_) => CsiError::Unavailable(message),
            ClientError::Meta(m) => match m {
                fs_core::admin::MetaError::Unauthenticated(_) => CsiError::PermissionDenied(message),
                m => match m.errno() {
                    libc::ENOENT => CsiError::NotFound(message),
                    libc::EEXIST => CsiError::AlreadyExists(message),
                    libc::EACCES | libc::EPERM => CsiError::PermissionDenied(message),
                    libc::EDQUOT | libc::ENOSPC => CsiError::ResourceExhausted(message),
                    libc::EINVAL | libc::ENAMETOOLONG | libc::ENOTDIR => CsiError::InvalidArgument(message),
                    libc::EIO | libc::EAGAIN => CsiError::Unavailable(message),
                    _ => CsiError::Internal(message),
                },
            },
        }
    }

    /// A mount that did not start.
    pub fn from_mount(e: MountError) -> CsiError {
        let message = format!("mounting: {e}");
        match e {
            MountError::Options(_) | MountError::Source(_) => CsiError::InvalidArgument(message),
            MountError::Connect(c) => CsiError::from_client("mounting", *c),
            MountError::Session { source, volume, server } => {
                CsiError::from_client(&format!("opening a session on volume {volume:?} at {server}"), *source)
            }
            MountError::OutsideToken { .. } => CsiError::PermissionDenied(message),
            MountError::Subpath { .. } => CsiError::NotFound(message),
            MountError::Encryption(_) => CsiError::PermissionDenied(message),
            _ => CsiError::Internal(message),
        }
    }

    /// A Kubernetes API call while doing `what`.
    pub fn from_kube(what: &str, e: kube::Error) -> CsiError {
        let message = format!("{what}: {e}");
        match &e {
            kube::Error::Api(s) if s.code == 404 => CsiError::NotFound(message),
            kube::Error::Api(s) if s.code == 403 => CsiError::PermissionDenied(format!(
                "{message} (the driver's ServiceAccount lacks this permission: check the chart's RBAC)"
            )),
            kube::Error::Api(s) if s.code == 409 => CsiError::Aborted(message),
            kube::Error::Api(s) if s.code == 422 => CsiError::InvalidArgument(message),
            _ => CsiError::Unavailable(message),
        }
    }
}

impl From<CsiError> for Status {
    fn from(e: CsiError) -> Status {
        let status = Status::new(e.code(), e.to_string());
        match e.code() {
            Code::Internal | Code::Unavailable => {
                tracing::warn!(code = ?status.code(), message = status.message(), "call failed")
            }
            _ => tracing::info!(code = ?status.code(), message = status.message(), "call refused"),
        }
        status
    }
}

pub type CsiResult<T> = Result<T, CsiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_refusals_keep_their_meaning() {
        let meta = |errno, m: &str| ClientError::Meta(fs_core::admin::MetaError::fs(errno, m));
        assert_eq!(Status::from(CsiError::from_client("x", meta(libc::ENOENT, "no volume"))).code(), Code::NotFound);
        assert_eq!(
            Status::from(CsiError::from_client("x", meta(libc::EDQUOT, "full"))).code(),
            Code::ResourceExhausted
        );
        let unauth = ClientError::Meta(fs_core::admin::MetaError::Unauthenticated("unknown token".into()));
        let s = Status::from(CsiError::from_client("opening", unauth));
        assert_eq!(s.code(), Code::PermissionDenied);
        assert!(s.message().starts_with("opening: unknown token"), "{}", s.message());
    }
}
