//! Errors of the metadata server, and their one mapping to errno and gRPC status.

use tonic::Code;

/// gRPC metadata key carrying the errno of a filesystem error.
pub const ERRNO_KEY: &str = "x-stratusfs-errno";

/// What a metadata operation can fail with. Every variant's message says what failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    /// A POSIX error, returned to the caller as its errno.
    #[error("{message}")]
    Fs { errno: i32, message: String },
    /// A block-map change was built on a version that is no longer current; the client rebuilds
    /// those indexes from the current map and retries.
    #[error("block indexes {indexes:?} of inode {ino} changed since they were read; re-read and retry")]
    Stale { ino: u64, indexes: Vec<u64> },
    /// No or a bad credential (token, session).
    #[error("{0}")]
    Unauthenticated(String),
    /// The protocol version or request shape is not one the server speaks.
    #[error("{0}")]
    Protocol(String),
    /// The database or the server failed; the operation changed nothing.
    #[error("metadata server internal error: {0}")]
    Internal(String),
    /// The request names a directory delegated to another session: the server recalls it and
    /// runs the request again (never sent to a client).
    #[error("directory {0} is delegated to another session and is being recalled; retry")]
    Delegated(u64),
}

impl MetaError {
    pub fn fs(errno: i32, message: impl Into<String>) -> MetaError {
        MetaError::Fs { errno, message: message.into() }
    }

    /// The errno a filesystem client reports for this error.
    pub fn errno(&self) -> i32 {
        match self {
            MetaError::Fs { errno, .. } => *errno,
            MetaError::Stale { .. } => libc::ESTALE,
            MetaError::Unauthenticated(_) => libc::EACCES,
            MetaError::Protocol(_) => libc::EPROTO,
            MetaError::Internal(_) => libc::EIO,
            MetaError::Delegated(_) => libc::EAGAIN,
        }
    }

    fn code(&self) -> Code {
        match self {
            MetaError::Fs { errno, .. } => match *errno {
                libc::ENOENT => Code::NotFound,
                libc::EEXIST => Code::AlreadyExists,
                libc::EACCES | libc::EPERM | libc::EROFS => Code::PermissionDenied,
                libc::EDQUOT | libc::ENOSPC => Code::ResourceExhausted,
                libc::EINVAL | libc::ENAMETOOLONG | libc::E2BIG => Code::InvalidArgument,
                libc::EINTR => Code::Cancelled,
                _ => Code::FailedPrecondition,
            },
            MetaError::Stale { .. } => Code::Aborted,
            MetaError::Unauthenticated(_) => Code::Unauthenticated,
            MetaError::Protocol(_) => Code::FailedPrecondition,
            MetaError::Internal(_) => Code::Internal,
            MetaError::Delegated(_) => Code::Unavailable,
        }
    }

    /// Recovers the error a server sent (the client side of [`From<MetaError> for tonic::Status`]).
    pub fn from_status(status: &tonic::Status) -> MetaError {
        let errno = status.metadata().get(ERRNO_KEY).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i32>().ok());
        let message = status.message().to_string();
        match (status.code(), errno) {
            (Code::Aborted, _) => MetaError::Stale { ino: 0, indexes: Vec::new() },
            (Code::Unauthenticated, _) => MetaError::Unauthenticated(message),
            (_, Some(libc::EPROTO)) => MetaError::Protocol(message),
            (_, Some(errno)) if errno != libc::EIO => MetaError::Fs { errno, message },
            (Code::Unimplemented, None) => MetaError::Protocol(format!(
                "the metadata server does not know this call ({message}); it is older than this client: upgrade it"
            )),
            (Code::Unavailable | Code::DeadlineExceeded | Code::Unknown, None) => {
                MetaError::fs(libc::EIO, format!("metadata server unreachable: {message}"))
            }
            (code, _) if message.is_empty() => MetaError::Internal(format!("gRPC status {code:?} without a message")),
            _ => MetaError::Internal(message),
        }
    }
}

impl From<MetaError> for tonic::Status {
    fn from(e: MetaError) -> tonic::Status {
        let mut status = tonic::Status::new(e.code(), e.to_string());
        status.metadata_mut().insert(ERRNO_KEY, e.errno().to_string().parse().expect("digits are valid metadata"));
        status
    }
}

impl From<redb::Error> for MetaError {
    fn from(e: redb::Error) -> MetaError {
        MetaError::Internal(format!("database: {e}"))
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for MetaError {
            fn from(e: $t) -> MetaError {
                MetaError::from(redb::Error::from(e))
            }
        }
    )*};
}
from_redb!(redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError, redb::DatabaseError);

impl From<prost::DecodeError> for MetaError {
    fn from(e: prost::DecodeError) -> MetaError {
        MetaError::Internal(format!("a database record does not decode ({e}); run `stratusfs fsck`"))
    }
}

pub type MetaResult<T> = Result<T, MetaError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_survives_the_wire() {
        for e in [
            MetaError::fs(libc::ENOENT, "no entry"),
            MetaError::fs(libc::EDQUOT, "quota"),
            MetaError::fs(libc::ENOTEMPTY, "not empty"),
            MetaError::fs(libc::EXDEV, "cross quota"),
        ] {
            let status = tonic::Status::from(e.clone());
            assert_eq!(MetaError::from_status(&status), e);
        }
        let s = tonic::Status::from(MetaError::Unauthenticated("unknown token".into()));
        assert_eq!(s.code(), Code::Unauthenticated);
        assert_eq!(MetaError::from_status(&s).errno(), libc::EACCES);
    }
}
