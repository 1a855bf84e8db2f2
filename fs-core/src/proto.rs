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

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: pb::ProtocolVersion = pb::ProtocolVersion::V1;
