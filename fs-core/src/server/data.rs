//! File data in the metadata: open files, the block map, truncation, and what the garbage
//! collector may delete.
//!
//! Blocks are immutable objects named by id. A block index of a file changes only through
//! [`commit_blocks`] (or truncate/unlink), which names the version each change was built on; a
//! stale base is refused whole. A replaced or removed block is recorded with the time it was
//! dereferenced, and the collector deletes it only after the volume's retention.

use prost::Message;

use redb::ReadableTable;

use crate::server::access::Caller;
use crate::server::ns::{NewNode, charge, charge_beside, mknod, purge};
use crate::server::quota::{Reservations, levels};
use crate::server::store::schema::dec;
use crate::server::store::tx::*;
use crate::wire::error::{MetaError, MetaResult};
use crate::wire::{pb, rec};

/// Removes block index `index` of `ino` from the block map: each object it names loses a
/// reference, and one that has none left goes to the garbage collector, dereferenced now.
pub(crate) fn deref_block(w: &mut W, ino: u64, index: u64, b: &rec::Block) -> MetaResult<()> {
    w.blocks.remove((ino, index))?;
    let now_ns = ts_nanos(&w.now);
    for id in std::iter::once(b.id).chain(b.shared.iter().copied()) {
        let extra = w.shared_refs.get(id)?.map(|v| v.value());
        match extra {
            Some(n) if n > 1 => {
                w.shared_refs.insert(id, n - 1)?;
            }
            Some(_) => {
                w.shared_refs.remove(id)?;
            }
            // The block's own object records its stored size; a shared one's is not known here.
            None => {
                w.gc.insert((now_ns, id), if id == b.id { b.stored_len } else { 0 })?;
            }
        }
    }
    w.counters.stored_blocks = w.counters.stored_blocks.saturating_sub(1);
    Ok(())
}

/// Sets a regular file's size. Shrinking drops the blocks past the end and shortens the last
/// block's valid length (its object stays; bytes past `len` read as zeros).
pub fn truncate(w: &mut W, ino: u64, inode: &mut rec::Inode, size: u64, block_size: u32) -> MetaResult<()> {
    let bs = block_size as u64;
    let old = attr(inode).size;
    let mut freed: u64 = 0;
    if size < old {
        let keep = size.div_ceil(bs);
        let mut gone = Vec::new();
        for item in w.blocks.range((ino, keep)..=(ino, u64::MAX))? {
            let (k, v) = item?;
            gone.push((k.value().1, dec::<rec::Block>(v.value())?));
        }
        for (index, b) in gone {
            freed += b.len as u64;
            deref_block(w, ino, index, &b)?;
        }
        let tail = size % bs;
        if tail != 0 {
            let index = size / bs;
            let cur = w.blocks.get((ino, index))?.map(|v| dec::<rec::Block>(v.value())).transpose()?;
            if let Some(mut b) = cur
                && b.len as u64 > tail
            {
                freed += b.len as u64 - tail;
                b.len = tail as u32;
                b.version = w.next_version();
                w.blocks.insert((ino, index), b.encode_to_vec().as_slice())?;
            }
        }
    }
    let a = attr_mut(inode);
    a.size = size;
    a.stored = a.stored.saturating_sub(freed);
    let quota_root = inode.quota_root;
    charge(w, quota_root, 0, -(freed as i64))
}

/// Opens an existing inode for `session`. O_TRUNC truncates a regular file to zero.
pub fn open(w: &mut W, c: &Caller, ino: u64, flags: u32, block_size: u32) -> MetaResult<(u64, rec::Inode)> {
    open_as(w, c, ino, flags, block_size, None)
}

/// [`open`] under a given open id (a delegation's holder chose it from its reserved range).
pub fn open_as(
    w: &mut W,
    c: &Caller,
    ino: u64,
    flags: u32,
    block_size: u32,
    id: Option<u64>,
) -> MetaResult<(u64, rec::Inode)> {
    let mut inode = w.inode(ino)?;
    let acc = flags as i32 & libc::O_ACCMODE;
    let trunc = flags as i32 & libc::O_TRUNC != 0;
    let writes = acc != libc::O_RDONLY || trunc;
    if writes {
        c.writable()?;
        if kind_of(&inode) == pb::FileKind::Directory {
            return Err(MetaError::fs(
                libc::EISDIR,
                format!("inode {ino} is a directory; it cannot be opened for writing"),
            ));
        }
    }
    if trunc && kind_of(&inode) == pb::FileKind::Regular {
        truncate(w, ino, &mut inode, 0, block_size)?;
        let now = w.now;
        let a = attr_mut(&mut inode);
        a.mtime = Some(now);
        a.ctime = Some(now);
        w.touch_change(&mut inode);
        w.put_inode(ino, &inode)?;
    }
    let open_id = match id {
        Some(id) => id,
        None => {
            let id = w.counters.next_open_id.max(1);
            w.counters.next_open_id = id + 1;
            id
        }
    };
    let rec = rec::OpenFile { session: c.session.to_vec(), ino, flags };
    w.open_files.insert(open_id, rec.encode_to_vec().as_slice())?;
    w.open_by_ino.insert((ino, open_id), ())?;
    Ok((open_id, inode))
}

/// What [`create`] did.
pub struct Created {
    pub inode: rec::Inode,
    pub open_id: u64,
    pub created: bool,
}

/// Creates and opens a regular file; without `exclusive` an existing file is opened instead.
pub fn create(w: &mut W, c: &Caller, req: &pb::MkNodRequest, block_size: u32) -> MetaResult<Created> {
    let (parent, name, flags) = (req.parent, req.name.as_slice(), req.flags);
    if let Some(d) = w.dentry(parent, name)? {
        if req.exclusive {
            return Err(MetaError::fs(
                libc::EEXIST,
                format!("{:?} already exists (O_EXCL)", String::from_utf8_lossy(name)),
            ));
        }
        let (open_id, inode) = open(w, c, d.ino, flags, block_size)?;
        return Ok(Created { inode, open_id, created: false });
    }
    let (ino, _) = mknod(
        w,
        c,
        parent,
        name,
        NewNode {
            kind: pb::FileKind::Regular,
            perm: req.perm,
            umask: req.umask,
            rdev: 0,
            symlink_target: None,
            ino: None,
            time: None,
        },
    )?;
    // The new file is empty: opening it never truncates.
    let (open_id, inode) = open(w, c, ino, flags & !(libc::O_TRUNC as u32), block_size)?;
    Ok(Created { inode, open_id, created: true })
}

/// Forgets an open file. The last close of an unlinked inode deletes it. Returns the inode.
pub fn release(w: &mut W, open_id: u64) -> MetaResult<Option<u64>> {
    let Some(of) = w.open_files.remove(open_id)?.map(|v| dec::<rec::OpenFile>(v.value())).transpose()? else {
        return Ok(None);
    };
    w.open_by_ino.remove((of.ino, open_id))?;
    if w.orphans.get(of.ino)?.is_some() && w.open_by_ino.range((of.ino, 0)..=(of.ino, u64::MAX))?.next().is_none() {
        let inode = w.inode(of.ino)?;
        purge(w, of.ino, &inode)?;
    }
    Ok(Some(of.ino))
}

/// Reserves `count` block ids for uploads; unreferenced ones are kept for the grace period.
pub fn allocate_blocks(w: &mut W, c: &Caller, count: u32) -> MetaResult<Vec<u64>> {
    c.writable()?;
    if count == 0 || count > 4096 {
        return Err(MetaError::fs(libc::EINVAL, format!("allocate 1..=4096 block ids at a time, not {count}")));
    }
    let first = w.counters.next_block_id.max(1);
    w.counters.next_block_id = first + count as u64;
    let now_ns = ts_nanos(&w.now);
    for id in first..first + count as u64 {
        w.uploads.insert(id, now_ns)?;
    }
    Ok((first..first + count as u64).collect())
}

/// Applies block-map changes to a regular file in one commit (see the module doc). Quota that
/// other sessions hold for unflushed writes counts as used; the caller's own reservation for the
/// inode becomes `req.reserved`. Returns the inode and the committed blocks.
pub fn commit_blocks(
    w: &mut W,
    c: &Caller,
    req: &pb::CommitBlocksRequest,
    block_size: u32,
    held: &Reservations,
) -> MetaResult<(rec::Inode, Vec<pb::BlockRef>)> {
    c.writable()?;
    let ino = req.ino;
    let mut inode = w.inode(ino)?;
    if kind_of(&inode) != pb::FileKind::Regular {
        return Err(MetaError::fs(libc::EINVAL, format!("inode {ino} is not a regular file; it has no blocks")));
    }
    let mut stale = Vec::new();
    let mut current = Vec::with_capacity(req.changes.len());
    let mut seen = std::collections::HashSet::new();
    for ch in &req.changes {
        if !seen.insert(ch.index) {
            return Err(MetaError::fs(libc::EINVAL, format!("block index {} appears twice in one commit", ch.index)));
        }
        let cur = w.blocks.get((ino, ch.index))?.map(|v| dec::<rec::Block>(v.value())).transpose()?;
        if cur.as_ref().map_or(0, |b| b.version) != ch.base_version {
            stale.push(ch.index);
        }
        current.push(cur);
    }
    if !stale.is_empty() {
        return Err(MetaError::Stale { ino, indexes: stale });
    }
    let mut delta: i64 = 0;
    let now = w.now;
    let mut committed = Vec::with_capacity(req.changes.len());
    for (ch, cur) in req.changes.iter().zip(current) {
        // Objects the new block shares with the one it replaces gain a reference before that
        // one drops its own.
        for &id in ch.block.iter().flat_map(|b| &b.shared) {
            if !cur.as_ref().is_some_and(|c| c.id == id || c.shared.contains(&id)) {
                return Err(MetaError::fs(
                    libc::EINVAL,
                    format!("block index {} names object {id}, which the block it replaces does not", ch.index),
                ));
            }
            let extra = w.shared_refs.get(id)?.map_or(0, |v| v.value());
            w.shared_refs.insert(id, extra + 1)?;
        }
        if let Some(old) = &cur {
            delta -= old.len as i64;
            deref_block(w, ino, ch.index, old)?;
        }
        let Some(b) = &ch.block else { continue };
        if b.len > block_size {
            return Err(MetaError::fs(
                libc::EINVAL,
                format!("block of {} bytes exceeds the block size {block_size}", b.len),
            ));
        }
        let chunks_hold = match b.chunk_size {
            0 => b.chunks == 0,
            cs => cs <= block_size && b.len.div_ceil(cs) == b.chunks,
        };
        if !chunks_hold {
            return Err(MetaError::fs(
                libc::EINVAL,
                format!(
                    "block id {}: {} chunks of {} bytes do not match its {} bytes",
                    b.id, b.chunks, b.chunk_size, b.len
                ),
            ));
        }
        if w.uploads.remove(b.id)?.is_none() {
            return Err(MetaError::fs(
                libc::EINVAL,
                format!("block id {} was not allocated for an upload, or is already committed", b.id),
            ));
        }
        let version = w.next_version();
        let rec = rec::Block {
            id: b.id,
            len: b.len,
            version,
            stored_len: b.stored_len,
            checksum: b.checksum.clone(),
            compression: b.compression,
            committed: Some(now),
            chunk_size: b.chunk_size,
            chunks: b.chunks,
            shared: b.shared.clone(),
        };
        w.blocks.insert((ino, ch.index), rec.encode_to_vec().as_slice())?;
        w.counters.stored_blocks += 1;
        delta += b.len as i64;
        committed.push(pb::BlockRef { index: ch.index, version, ..b.clone() });
    }
    let quota_root = inode.quota_root;
    let key = (c.session, ino);
    charge_beside(w, quota_root, 0, delta, |level| held.others(&key, level))?;
    let lv = levels(quota_root, |q| w.quota(q))?;
    held.set(key, req.reserved, lv);
    let a = attr_mut(&mut inode);
    a.size = a.size.max(req.end);
    a.stored = if delta >= 0 { a.stored + delta as u64 } else { a.stored.saturating_sub(delta.unsigned_abs()) };
    a.mtime = Some(req.mtime.unwrap_or(now));
    a.ctime = Some(now);
    w.touch_change(&mut inode);
    w.put_inode(ino, &inode)?;
    Ok((inode, committed))
}

/// The dereferenced blocks' `GC_PENDING` keys, and the ids of abandoned uploads.
pub type Collectable = (Vec<(i64, u64)>, Vec<u64>);

/// Block objects the collector may delete now, given the retention (seconds; -1 forever) and the
/// upload grace period: the dereferenced blocks' `GC_PENDING` keys and the abandoned uploads' ids.
pub fn collectable(
    r: &redb::ReadTransaction,
    now_ns: i64,
    retention_secs: i64,
    grace: std::time::Duration,
) -> MetaResult<Collectable> {
    let gc = r.open_table(crate::server::store::schema::GC_PENDING)?;
    let mut dereferenced = Vec::new();
    if retention_secs >= 0 {
        let cutoff = now_ns.saturating_sub(retention_secs.saturating_mul(1_000_000_000));
        // A block dereferenced at t may go only after t + retention: strictly before the cutoff.
        for item in gc.range((i64::MIN, 0)..(cutoff, 0))? {
            let (k, _) = item?;
            dereferenced.push(k.value());
        }
    }
    let uploads = r.open_table(crate::server::store::schema::UPLOADS)?;
    let grace_cutoff = now_ns.saturating_sub(grace.as_nanos() as i64);
    let mut abandoned = Vec::new();
    for item in redb::ReadableTable::iter(&uploads)? {
        let (k, v) = item?;
        if v.value() < grace_cutoff {
            abandoned.push(k.value());
        }
    }
    Ok((dereferenced, abandoned))
}
