//! Mounting and unmounting a FUSE filesystem with mount(2) (we run as root; no fusermount).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::mount::{MntFlags, MsFlags};
use serde::{Deserialize, Serialize};

use super::session::open_dev_fuse;

/// Kernel mount options of a FUSE mount.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelOptions {
    pub read_only: bool,
    pub allow_other: bool,
    pub noatime: bool,
    pub noexec: bool,
    pub nosuid: bool,
    pub nodev: bool,
    /// Largest read the kernel sends in one request.
    pub max_read: u32,
}

/// The mount(2) flags of the options.
fn flags_of(o: &KernelOptions) -> MsFlags {
    [
        (o.read_only, MsFlags::MS_RDONLY),
        (o.noatime, MsFlags::MS_NOATIME),
        (o.noexec, MsFlags::MS_NOEXEC),
        (o.nosuid, MsFlags::MS_NOSUID),
        (o.nodev, MsFlags::MS_NODEV),
    ]
    .into_iter()
    .filter(|(on, _)| *on)
    .fold(MsFlags::empty(), |acc, (_, f)| acc | f)
}

/// Mounts a FUSE filesystem named `source` (shown in /proc/mounts) of type `fuse.SUBTYPE` on
/// `mountpoint`; returns the connection's fd, which then needs the INIT handshake.
pub fn mount(mountpoint: &Path, source: &str, subtype: &str, o: &KernelOptions) -> std::io::Result<OwnedFd> {
    let fd = open_dev_fuse()?;
    let mut data = format!("fd={},rootmode=40000,user_id=0,group_id=0,default_permissions", fd.as_raw_fd());
    if o.allow_other {
        data.push_str(",allow_other");
    }
    if o.max_read > 0 {
        data.push_str(&format!(",max_read={}", o.max_read));
    }
    let fstype = format!("fuse.{subtype}");
    nix::mount::mount(Some(source), mountpoint, Some(fstype.as_str()), flags_of(o), Some(data.as_str())).map_err(
        |e| {
            let e = std::io::Error::from(e);
            std::io::Error::new(e.kind(), format!("mounting {source} on {}: {e}", mountpoint.display()))
        },
    )?;
    Ok(fd)
}

/// Unmounts `mountpoint`; `lazy` detaches it even while files are open (MNT_DETACH).
pub fn unmount(mountpoint: &Path, lazy: bool) -> std::io::Result<()> {
    let flags = if lazy { MntFlags::MNT_DETACH } else { MntFlags::empty() };
    Ok(nix::mount::umount2(mountpoint, flags)?)
}

/// Changes the flags (read-only, noexec, ...) of the FUSE mount on `mountpoint`
/// (mount -o remount,...).
pub fn remount(mountpoint: &Path, o: &KernelOptions) -> std::io::Result<()> {
    let flags = MsFlags::MS_REMOUNT | flags_of(o);
    Ok(nix::mount::mount(None::<&str>, mountpoint, None::<&str>, flags, None::<&str>)?)
}
