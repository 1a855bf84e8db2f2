//! Generated protocol and record types (`fs-core/proto/*.proto`).

#[allow(clippy::all, missing_docs)]
pub mod stratusfs {
    pub mod meta {
        pub mod v1 {
            tonic::include_proto!("stratusfs.meta.v1");
        }
    }
    pub mod store {
        pub mod v1 {
            tonic::include_proto!("stratusfs.store.v1");
        }
    }
}

/// Wire messages of the metadata protocol.
pub use stratusfs::meta::v1 as pb;
/// Records kept in the metadata server's database.
pub use stratusfs::store::v1 as rec;

pub mod error;

pub use error::MetaError;

/// Largest message either side decodes (a commit of many block changes, a large xattr).
pub const MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// gRPC metadata key carrying an account token (admin calls).
pub const ACCOUNT_TOKEN_KEY: &str = "x-stratusfs-account-token";

/// A volume's block size when its creator gives none.
pub const DEFAULT_BLOCK_SIZE: u32 = 4 * 1024 * 1024;
/// A volume's history retention (seconds) when its creator gives none: 7 days.
pub const DEFAULT_RETENTION_SECS: i64 = 7 * 24 * 3600;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: pb::ProtocolVersion = pb::ProtocolVersion::V1;

/// The comment of a claim's tokens (`/pvc-1` → `claim /pvc-1`): how the server finds them on a
/// retried create or a delete, and a client finds a claim.
pub fn claim_comment(subpath: &str) -> String {
    format!("claim /{}", subpath.trim_matches('/'))
}
