//! The metadata server: volumes in redb, sessions, POSIX metadata, locks, quotas and block GC,
//! served over gRPC with TLS.

pub mod access;
pub mod client;
pub mod data;
pub mod deleg;
pub mod error;
pub mod locks;
pub mod metrics;
pub mod ns;
pub mod quota;
pub mod schema;
pub mod server;
pub mod service;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod tx;
pub mod volume;
pub mod writer;

pub use error::{MetaError, MetaResult};
