//! stratusfs core: everything the `stratusfs` command runs.
//!
//! - [`meta`]: the metadata server (volumes, sessions, namespace, locks, quotas, GC) and its
//!   gRPC service.
//! - [`blockstore`]: object-storage backends under the block store.
//! - [`proto`]: the wire protocol and database records generated from `proto/*.proto`.
//! - [`tls`]: process-wide TLS set-up, certificates and fingerprints.

pub mod acl;
pub mod bench;
pub mod blocking;
pub mod blockstore;
pub mod cli;
pub mod client;
pub mod daemon;
pub mod fuse;
pub mod meta;
pub mod mount;
pub mod proto;
pub mod tls;
pub mod up;
