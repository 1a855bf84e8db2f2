//! stratusfs core: the filesystem whose data lives as blocks in object storage and whose metadata
//! lives on a metadata server, as a library. The `stratusfs` command, the operator and the CSI
//! driver all use this face; everything else in the crate is private to it.
//! `docs/library.md` maps the folders to the parts and shows each entry point in use.
//!
//! - Mounts ([`mount`]): [`Mount::start`] a volume on a directory and get a handle back
//!   ([`Mount::wait`], [`Mount::unmount`], [`Mount::stats`]); hand a live mount to another
//!   process with [`Mount::quiesce`], [`Quiesced::handover`], [`Handover::send`] /
//!   [`Handover::receive`] and [`Mount::adopt`].
//! - Administration ([`admin`]): the typed [`AdminClient`] (volumes, tokens, quotas, usage and
//!   sessions, claims).
//! - The metadata server ([`server`]): its configuration as a serde value ([`ServerConfig`]) and
//!   [`server::start`].
//! - Block stores ([`blockstore`]): what a volume's record says about its bucket
//!   ([`BackendSpec`]).
//! - TLS ([`tls`]): the process-wide crypto provider, and how clients trust a server.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use fs_core::{ClientTrust, Credentials, Mount, MountOptions, MountSpec};
//! fs_core::tls::install_crypto_provider();
//! let spec = MountSpec {
//!     source: "stratusfs://meta.example:7480/vol".parse()?,
//!     mountpoint: "/mnt/vol".into(),
//!     options: MountOptions::parse(&["allow_other,threads=4".into()])?,
//!     credentials: Credentials {
//!         token: std::fs::read_to_string("/etc/stratusfs/vol.token")?.trim().into(),
//!         trust: ClientTrust { ca_file: Some("/etc/stratusfs/ca.pem".into()), fingerprint: None, ..Default::default() },
//!     },
//! };
//! let mount = Mount::start(spec).await?;
//! println!("{} L1 hits so far", mount.stats().l1_hits);
//! mount.unmount().await?;
//! # Ok(()) }
//! ```

pub mod bench;
pub(crate) mod blocking;
pub mod blockstore;
pub mod crypto;
pub(crate) mod fs;
pub(crate) mod fuse;
pub(crate) mod metaclient;
pub mod mount;
pub mod server;
pub mod tls;
pub(crate) mod wire;

/// Administration of a metadata server: the typed client and its types.
pub mod admin {
    pub use crate::metaclient::ClientError;
    pub use crate::metaclient::admin::{
        AdminClient, Claim, ClaimSpec, ClaimState, Compression, GcReport, NewToken, Quota, QuotaUsage, SessionInfo,
        TokenInfo, TokenScope, Usage, Volume, VolumeSpec, VolumeUpdate,
    };
    pub use crate::wire::MetaError;
}

pub use admin::{AdminClient, ClientError};
pub use blockstore::{BackendError, BackendSpec, check_backend, delete_volume_objects};
pub use mount::handover::{Handover, HandoverError, HandoverState, receive_frame, send_frame};
pub use mount::{Adopted, Credentials, Mount, MountError, MountOptions, MountSpec, MountStats, Quiesced, Source};
pub use server::{ServerConfig, ServerError};
pub use tls::ClientTrust;

/// Results of filesystem operations: the error is the errno the caller sees.
pub(crate) type FsResult<T> = Result<T, i32>;

/// What tests of the protocol and the server reach beyond the face: an in-process server, the
/// generated protocol, the raw session client and the server's own parts. Only with the
/// `testkit` feature (the crate's own tests, the e2e crate, the fuzz target).
#[cfg(any(test, feature = "testkit"))]
pub mod testkit {
    pub use crate::metaclient::{MetaRpc, Session, connect};
    /// POSIX ACL xattr values as the kernel writes them.
    pub mod acl {
        pub use crate::server::acl::{bytes, entries};
    }
    pub use crate::server::decode::decode_any;
    pub use crate::server::state::MetaServer;
    pub use crate::server::store::schema::{META, SCHEMA_VERSION};
    pub use crate::server::store::volume::VolumeDb;
    pub use crate::server::store::writer::DURABLE_WITHIN;
    pub use crate::server::testkit::TestServer;
    pub use crate::wire::{MetaError, PROTOCOL_VERSION, pb, rec};
    /// Where block objects live in a bucket.
    pub mod layout {
        pub use crate::blockstore::layout::block_key;
    }
}
