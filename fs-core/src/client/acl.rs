//! POSIX ACLs in their xattr form (`system.posix_acl_access`, `system.posix_acl_default`): the
//! kernel enforces them (FUSE_POSIX_ACL); the filesystem keeps the mode in step with the access
//! ACL and lets new inodes inherit a directory's default ACL.

/// An ACL's entries: (tag, permission bits, id).
pub type Entries = Vec<(u16, u16, u32)>;

/// The xattr that holds a POSIX access ACL.
pub const ACL_ACCESS: &[u8] = b"system.posix_acl_access";

/// The permission bits (0o777) a POSIX ACL in its xattr form implies: owner from USER_OBJ, group
/// class from MASK (or GROUP_OBJ without a mask), other from OTHER. `None` if it does not parse.
pub fn acl_mode_bits(value: &[u8]) -> Option<u32> {
    let entries = acl_entries(value)?;
    let perm = |tag: u16| entries.iter().find(|e| e.0 == tag).map(|e| e.1 as u32 & 7);
    Some(perm(0x01)? << 6 | perm(0x10).or(perm(0x04))? << 3 | perm(0x20)?)
}

/// The xattr that holds a directory's default ACL.
pub const ACL_DEFAULT: &[u8] = b"system.posix_acl_default";

/// ACL entries in their xattr form: (tag, perm, id).
pub fn acl_entries(value: &[u8]) -> Option<Entries> {
    let version = u32::from_le_bytes(value.get(..4)?.try_into().ok()?);
    if version != 2 || !(value.len() - 4).is_multiple_of(8) {
        return None;
    }
    Some(
        value[4..]
            .chunks_exact(8)
            .map(|e| {
                (
                    u16::from_le_bytes([e[0], e[1]]),
                    u16::from_le_bytes([e[2], e[3]]),
                    u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
                )
            })
            .collect(),
    )
}

pub fn acl_bytes(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// What a new inode created with `mode` in a directory with default ACL `dacl` gets (POSIX.1e):
/// the access ACL (the default's entries with the owner, group class and other permissions
/// limited by `mode`) and its permission bits. The umask does not apply.
pub fn inherit_acl(dacl: &[u8], mode: u32) -> Option<(Vec<u8>, u32)> {
    let mut entries = acl_entries(dacl)?;
    let has_mask = entries.iter().any(|e| e.0 == 0x10);
    for e in &mut entries {
        let limit = match e.0 {
            0x01 => (mode >> 6) & 7,
            0x20 => mode & 7,
            0x10 => (mode >> 3) & 7,
            0x04 if !has_mask => (mode >> 3) & 7,
            _ => 7,
        };
        e.1 &= limit as u16;
    }
    let bytes = acl_bytes(&entries);
    let bits = acl_mode_bits(&bytes)?;
    Some((bytes, (mode & !0o777) | bits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_mode_bits_follow_the_mask() {
        // user::rw- user:65534:r-- group::--- mask::r-- other::---
        let mut v = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in
            [(1u16, 6u16, u32::MAX), (2, 4, 65534), (4, 0, u32::MAX), (0x10, 4, u32::MAX), (0x20, 0, u32::MAX)]
        {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        assert_eq!(acl_mode_bits(&v), Some(0o640));
        assert_eq!(acl_mode_bits(&v[..v.len() - 8]), None, "no OTHER entry");
        assert_eq!(acl_mode_bits(b"junk"), None);
        // A default ACL limited by a create mode of 0644: the mask keeps only r.
        let (access, mode) = inherit_acl(&v, 0o644).unwrap();
        assert_eq!(mode, 0o640);
        assert!(acl_entries(&access).unwrap().contains(&(2, 4, 65534)), "named entries are kept");
    }
}
