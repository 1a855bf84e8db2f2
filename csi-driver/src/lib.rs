//! The stratusfs CSI driver (`csi.stratusfs.io`). The gRPC types come from `proto/csi.proto`, the
//! CSI spec's messages written in this repository with the spec's field numbers.
//!
//! One binary: the Controller (dynamic provisioning of claims: `controller.rs`, with what it reads
//! and writes in Kubernetes in `cluster.rs`) and the Node (FUSE sessions and bind mounts:
//! `node.rs`), each with Identity; errors become gRPC status codes in `error.rs` only
//! (docs/csi.md).

pub mod caps;
pub mod cli;
pub mod cluster;
pub mod controller;
pub mod error;
pub mod holder;
pub mod identity;
pub mod metrics;
pub mod node;
pub mod server;
pub mod takeover;

/// The CSI v1 protocol.
#[allow(clippy::all, missing_docs)]
pub mod csi {
    tonic::include_proto!("csi.v1");
}

/// The driver's name, as the CSIDriver object and every PV name it.
pub const DRIVER_NAME: &str = "csi.stratusfs.io";
