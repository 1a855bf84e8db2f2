//! The metadata server: volumes in redb, sessions, POSIX metadata, locks, quotas and block GC,
//! served over gRPC with TLS.

pub(crate) mod access;
pub(crate) mod acl;
pub(crate) mod claims;
pub(crate) mod config;
pub(crate) mod data;
#[cfg(any(test, feature = "testkit"))]
pub(crate) mod decode;
pub(crate) mod deleg;
pub(crate) mod grpc;
pub(crate) mod http;
pub(crate) mod locks;
pub(crate) mod metrics;
pub(crate) mod ns;
pub(crate) mod quota;
pub(crate) mod run;
pub(crate) mod state;
pub(crate) mod store;
#[cfg(any(test, feature = "testkit"))]
pub(crate) mod testkit;

pub use config::{ServerConfig, TlsFiles};
pub use run::{Running, ServerError, start};
