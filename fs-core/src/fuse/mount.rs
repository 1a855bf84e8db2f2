//! Mounting and unmounting a FUSE filesystem with mount(2) (we run as root; no fusermount).

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::session::open_dev_fuse;

/// Kernel mount options of a FUSE mount.
#[derive(Clone, Debug, Default)]
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

fn cstr(s: impl AsRef<[u8]>) -> std::io::Result<CString> {
    CString::new(s.as_ref())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "a NUL byte in a mount argument"))
}

/// The mount(2) flags of the options.
fn flags_of(o: &KernelOptions) -> libc::c_ulong {
    [
        (o.read_only, libc::MS_RDONLY),
        (o.noatime, libc::MS_NOATIME),
        (o.noexec, libc::MS_NOEXEC),
        (o.nosuid, libc::MS_NOSUID),
        (o.nodev, libc::MS_NODEV),
    ]
    .into_iter()
    .filter(|(on, _)| *on)
    .fold(0, |acc, (_, f)| acc | f)
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
    let flags = flags_of(o);
    let (src, target, fstype, data) =
        (cstr(source)?, cstr(mountpoint.as_os_str().as_bytes())?, cstr(format!("fuse.{subtype}"))?, cstr(data)?);
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let r = unsafe {
        libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), flags, data.as_ptr() as *const libc::c_void)
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(e.kind(), format!("mounting {source} on {}: {e}", mountpoint.display())));
    }
    Ok(fd)
}

/// Unmounts `mountpoint`; `lazy` detaches it even while files are open (MNT_DETACH).
pub fn unmount(mountpoint: &Path, lazy: bool) -> std::io::Result<()> {
    let target = cstr(mountpoint.as_os_str().as_bytes())?;
    // SAFETY: a valid NUL-terminated path.
    let r = unsafe { libc::umount2(target.as_ptr(), if lazy { libc::MNT_DETACH } else { 0 }) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Changes the flags (read-only, noexec, ...) of the FUSE mount on `mountpoint`
/// (mount -o remount,...).
pub fn remount(mountpoint: &Path, o: &KernelOptions) -> std::io::Result<()> {
    let target = cstr(mountpoint.as_os_str().as_bytes())?;
    let flags = libc::MS_REMOUNT | flags_of(o);
    // SAFETY: a valid NUL-terminated path; null source, type and data are allowed for a remount.
    let r = unsafe { libc::mount(std::ptr::null(), target.as_ptr(), std::ptr::null(), flags, std::ptr::null()) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
