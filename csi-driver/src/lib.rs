//! The stratusfs CSI driver (`csi.stratusfs.io`). The gRPC types come from `proto/csi.proto`, the
//! CSI spec's messages written in this repository with the spec's field numbers.
//!
//! Built so far: the Identity service and the server on a Unix socket. The Controller and Node
//! services are [8]'s next steps (docs/csi.md).

pub mod identity;
pub mod server;

/// The CSI v1 protocol.
#[allow(clippy::all, missing_docs)]
pub mod csi {
    tonic::include_proto!("csi.v1");
}

/// The driver's name, as the CSIDriver object and every PV name it.
pub const DRIVER_NAME: &str = "csi.stratusfs.io";
