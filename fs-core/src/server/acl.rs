//! POSIX ACLs in their xattr form (`system.posix_acl_access`, `system.posix_acl_default`). The
//! kernel enforces them (FUSE_POSIX_ACL); the metadata server keeps them in step with the mode, in
//! the same transaction as the change, as a local filesystem does: a new inode inherits its
//! directory's default ACL ([`inherit`]), setting an access ACL sets the mode's permission bits
//! ([`mode_bits`] of its [`entries`]), and chmod rewrites the access ACL's owner, group class and other entries
//! ([`chmod`]). With FUSE_POSIX_ACL the kernel leaves all three to the filesystem.

/// The xattr that holds a POSIX access ACL.
pub const ACCESS: &[u8] = b"system.posix_acl_access";
/// The xattr that holds a directory's default ACL.
pub const DEFAULT: &[u8] = b"system.posix_acl_default";

const USER_OBJ: u16 = 0x01;
const GROUP_OBJ: u16 = 0x04;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
const VERSION: u32 = 2;

/// An ACL's entries: (tag, permission bits, id).
pub type Entries = Vec<(u16, u16, u32)>;

/// ACL entries in their xattr form. `None` if the value is not a version-2 ACL with an owner,
/// group and other entry.
pub fn entries(value: &[u8]) -> Option<Entries> {
    let version = u32::from_le_bytes(value.get(..4)?.try_into().ok()?);
    if version != VERSION || !(value.len() - 4).is_multiple_of(8) {
        return None;
    }
    let entries: Entries = value[4..]
        .chunks_exact(8)
        .map(|e| {
            (
                u16::from_le_bytes([e[0], e[1]]),
                u16::from_le_bytes([e[2], e[3]]),
                u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            )
        })
        .collect();
    let has = |tag| entries.iter().any(|e| e.0 == tag);
    (has(USER_OBJ) && has(GROUP_OBJ) && has(OTHER)).then_some(entries)
}

/// The xattr form of `entries`.
pub fn bytes(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = VERSION.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// The permission bits (0o777) an access ACL implies: owner from the owner entry, group class from
/// the mask (or the owning group's entry without a mask), other from the other entry. [`entries`]
/// guarantees all three are there.
pub fn mode_bits(entries: &Entries) -> u32 {
    let perm = |tag: u16| entries.iter().find(|e| e.0 == tag).map(|e| e.1 as u32 & 7);
    perm(USER_OBJ).unwrap_or(0) << 6 | perm(MASK).or(perm(GROUP_OBJ)).unwrap_or(0) << 3 | perm(OTHER).unwrap_or(0)
}

/// The bits of `mode` that entry `tag` stands for: the owner's, the group class's (the mask, or
/// the owning group's entry when there is no mask) or other's. `None` for the entries the mode
/// does not speak for (named users and groups, the owning group's entry beside a mask).
fn class_bits(tag: u16, has_mask: bool, mode: u32) -> Option<u16> {
    let bits = match tag {
        USER_OBJ => mode >> 6,
        MASK => mode >> 3,
        GROUP_OBJ if !has_mask => mode >> 3,
        OTHER => mode,
        _ => return None,
    };
    Some((bits & 7) as u16)
}

/// Whether an ACL says no more than a mode does (only the owner, group and other entries): such
/// an access ACL is kept as the mode alone, as local filesystems do.
pub fn is_minimal(entries: &Entries) -> bool {
    entries.len() == 3
}

/// The access ACL after a chmod to `perm`: the owner, group class (the mask if there is one, else
/// the owning group) and other entries take the new bits; named entries stay. `None` if `value`
/// does not parse.
pub fn chmod(value: &[u8], perm: u32) -> Option<Vec<u8>> {
    let mut entries = entries(value)?;
    let has_mask = entries.iter().any(|e| e.0 == MASK);
    for e in &mut entries {
        if let Some(bits) = class_bits(e.0, has_mask, perm) {
            e.1 = bits;
        }
    }
    Some(bytes(&entries))
}

/// What a new inode created with `mode` in a directory with default ACL `dacl` gets (POSIX.1e):
/// its permission bits and its access ACL, the default's entries with the owner, group class and
/// other limited by `mode` (`None` when that says no more than the mode). The umask does not apply.
/// `None` if `dacl` does not parse.
pub fn inherit(dacl: &[u8], mode: u32) -> Option<(u32, Option<Vec<u8>>)> {
    let mut entries = entries(dacl)?;
    let has_mask = entries.iter().any(|e| e.0 == MASK);
    for e in &mut entries {
        e.1 &= class_bits(e.0, has_mask, mode).unwrap_or(7);
    }
    let bits = mode_bits(&entries);
    let access = (!is_minimal(&entries)).then(|| bytes(&entries));
    Some(((mode & !0o777) | bits, access))
}

#[cfg(test)]
mod tests {
    use super::*;

    // user::rw- user:65534:r-- group::--- mask::r-- other::---
    fn named() -> Vec<u8> {
        bytes(&[
            (USER_OBJ, 6, u32::MAX),
            (2, 4, 65534),
            (GROUP_OBJ, 0, u32::MAX),
            (MASK, 4, u32::MAX),
            (OTHER, 0, u32::MAX),
        ])
    }

    #[test]
    fn mode_bits_follow_the_mask() {
        let v = named();
        assert_eq!(entries(&v).map(|e| mode_bits(&e)), Some(0o640));
        assert_eq!(entries(&v[..v.len() - 8]), None, "no OTHER entry");
        assert_eq!(entries(b"junk"), None);
        let minimal = bytes(&[(USER_OBJ, 7, u32::MAX), (GROUP_OBJ, 5, u32::MAX), (OTHER, 1, u32::MAX)]);
        assert_eq!(
            entries(&minimal).map(|e| mode_bits(&e)),
            Some(0o751),
            "without a mask the group entry is the group class"
        );
    }

    #[test]
    fn chmod_rewrites_owner_mask_and_other_and_keeps_named_entries() {
        let after = entries(&chmod(&named(), 0o750).unwrap()).unwrap();
        assert!(after.contains(&(USER_OBJ, 7, u32::MAX)));
        assert!(after.contains(&(MASK, 5, u32::MAX)));
        assert!(after.contains(&(GROUP_OBJ, 0, u32::MAX)), "with a mask the owning group's entry stays");
        assert!(after.contains(&(OTHER, 0, u32::MAX)));
        assert!(after.contains(&(2, 4, 65534)), "named entries stay");
        let minimal = bytes(&[(USER_OBJ, 6, u32::MAX), (GROUP_OBJ, 4, u32::MAX), (OTHER, 4, u32::MAX)]);
        assert_eq!(entries(&chmod(&minimal, 0o600).unwrap()).map(|e| mode_bits(&e)), Some(0o600));
    }

    #[test]
    fn inheritance_limits_the_default_by_the_create_mode() {
        // A default ACL limited by a create mode of 0644: the mask keeps only r.
        let (mode, access) = inherit(&named(), 0o644).unwrap();
        assert_eq!(mode, 0o640);
        assert!(entries(&access.unwrap()).unwrap().contains(&(2, 4, 65534)), "named entries are kept");
        // A default ACL with no named entries gives the mode only.
        let minimal = bytes(&[(USER_OBJ, 7, u32::MAX), (GROUP_OBJ, 7, u32::MAX), (OTHER, 5, u32::MAX)]);
        assert_eq!(inherit(&minimal, 0o40777), Some((0o40775, None)));
    }
}
