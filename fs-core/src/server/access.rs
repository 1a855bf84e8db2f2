//! Who is asking, and what their token lets them do.
//!
//! The metadata server enforces the token's limits (subtree, read-only, root squash) whatever the
//! client claims; mode bits and ACLs are the kernel's (default_permissions).

use crate::wire::error::{MetaError, MetaResult};

/// A session id: 16 random bytes.
pub type SessionId = [u8; 16];

/// The uid and gid a squashed root becomes.
pub const NOBODY: u32 = 65534;

#[derive(Clone, Debug)]
pub struct Caller {
    pub session: SessionId,
    /// The inode the session sees as `/`.
    pub root: u64,
    pub read_only: bool,
    pub root_squash: bool,
    /// Names are ciphertext (encrypted volume): the server checks only their length.
    pub opaque_names: bool,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub pid: u32,
    /// The request's number in its session (0: none), for replies kept against retries.
    pub request: u64,
}

impl Caller {
    /// A caller with every right on the whole volume (administration, tests).
    pub fn admin() -> Caller {
        Caller {
            session: [0; 16],
            root: crate::server::store::tx::ROOT_INO,
            read_only: false,
            root_squash: false,
            opaque_names: false,
            uid: 0,
            gid: 0,
            groups: Vec::new(),
            pid: 0,
            request: 0,
        }
    }

    pub fn writable(&self) -> MetaResult<()> {
        if self.read_only {
            return Err(MetaError::fs(libc::EROFS, "this session's token is read-only"));
        }
        Ok(())
    }

    /// The uid and gid new inodes get (root squashed to nobody when the token says so).
    pub fn owner_ids(&self) -> (u32, u32) {
        if self.root_squash {
            (if self.uid == 0 { NOBODY } else { self.uid }, if self.gid == 0 { NOBODY } else { self.gid })
        } else {
            (self.uid, self.gid)
        }
    }

    /// Whether the caller acts as root (uid 0, not squashed).
    pub fn is_root(&self) -> bool {
        self.uid == 0 && !self.root_squash
    }

    pub fn in_group(&self, gid: u32) -> bool {
        let (_, own) = self.owner_ids();
        own == gid || self.groups.contains(&gid)
    }

    /// What sealing adds to a value (symlink target, xattr) the client sends: the volume's
    /// values are encrypted when its names are.
    pub fn seal_overhead(&self) -> usize {
        if self.opaque_names { crate::crypto::SEAL_OVERHEAD } else { 0 }
    }

    /// Checks a name the caller wants to create: on plain volumes 1..=255 bytes without `/` or
    /// NUL; on encrypted volumes any 1..=271 bytes (the client checked the plaintext).
    pub fn check_name(&self, name: &[u8]) -> MetaResult<()> {
        let max = if self.opaque_names { 271 } else { 255 };
        if name.is_empty() {
            return Err(MetaError::fs(libc::EINVAL, "an empty name is not allowed"));
        }
        if name.len() > max {
            return Err(MetaError::fs(
                libc::ENAMETOOLONG,
                format!("name of {} bytes is longer than {max}", name.len()),
            ));
        }
        if !self.opaque_names && name.iter().any(|&b| b == b'/' || b == 0) {
            return Err(MetaError::fs(
                libc::EINVAL,
                format!("name {:?} contains '/' or NUL", String::from_utf8_lossy(name)),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_by_volume_kind() {
        let mut c = Caller::admin();
        assert!(c.check_name(b"ok").is_ok());
        assert_eq!(c.check_name(b"a/b").unwrap_err().errno(), libc::EINVAL);
        assert_eq!(c.check_name(b"a\0b").unwrap_err().errno(), libc::EINVAL);
        assert_eq!(c.check_name(&[b'x'; 256]).unwrap_err().errno(), libc::ENAMETOOLONG);
        assert_eq!(c.check_name(b"").unwrap_err().errno(), libc::EINVAL);
        c.opaque_names = true;
        assert!(c.check_name(&[b'/'; 271]).is_ok());
        assert_eq!(c.check_name(&[b'x'; 272]).unwrap_err().errno(), libc::ENAMETOOLONG);
    }

    #[test]
    fn root_squash_maps_root_to_nobody() {
        let mut c = Caller::admin();
        c.root_squash = true;
        assert_eq!(c.owner_ids(), (NOBODY, NOBODY));
        assert!(!c.is_root());
        c.uid = 1000;
        c.gid = 100;
        assert_eq!(c.owner_ids(), (1000, 100));
    }
}
