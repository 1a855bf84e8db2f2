//! Volume capabilities: what a stratusfs volume can be (a filesystem, any access mode, any
//! number of nodes), checked the same way by the controller and the node.

use crate::csi::VolumeCapability;
use crate::csi::volume_capability::access_mode::Mode;
use crate::csi::volume_capability::{AccessType, MountVolume};
use crate::error::{CsiError, CsiResult};

/// The filesystem types a capability may name: none, or ours.
const FS_TYPES: [&str; 3] = ["", "stratusfs", "fuse.stratusfs"];

/// Why a capability cannot be served, or its mount part and whether it is read-only.
pub fn check(cap: &VolumeCapability) -> Result<(&MountVolume, bool), String> {
    let mount = match &cap.access_type {
        Some(AccessType::Mount(m)) => m,
        Some(AccessType::Block(_)) => {
            return Err(
                "block access is not offered: a stratusfs volume is a filesystem (volumeMode: Filesystem)".into()
            );
        }
        None => return Err("the capability names no access type (mount or block)".into()),
    };
    if !FS_TYPES.contains(&mount.fs_type.as_str()) {
        return Err(format!(
            "fs_type {:?}: a stratusfs volume is mounted as stratusfs; leave fsType empty",
            mount.fs_type
        ));
    }
    let mode = cap.access_mode.as_ref().map(|m| m.mode()).unwrap_or(Mode::Unknown);
    let read_only = match mode {
        Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly => true,
        Mode::SingleNodeWriter
        | Mode::MultiNodeSingleWriter
        | Mode::MultiNodeMultiWriter
        | Mode::SingleNodeSingleWriter
        | Mode::SingleNodeMultiWriter => false,
        Mode::Unknown => return Err("the capability names no access mode".into()),
    };
    Ok((mount, read_only))
}

/// Every capability of a request, which must name at least one.
pub fn check_all(caps: &[VolumeCapability]) -> CsiResult<()> {
    if caps.is_empty() {
        return Err(CsiError::InvalidArgument("volume_capabilities is missing: give at least one".into()));
    }
    for cap in caps {
        check(cap).map_err(CsiError::InvalidArgument)?;
    }
    Ok(())
}
