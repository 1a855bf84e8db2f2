//! How a block's bytes are stored. A block object is a chunk table followed by the block's chunks
//! of [`CHUNK_SIZE`] logical bytes, each compressed on its own as the volume says and checksummed
//! (XXH3-64) in the table; the block map keeps the table's checksum (XXH3-128). A table entry may
//! name a chunk in another block object: a small rewrite uploads only the chunks it changed and
//! keeps the rest where the block it replaces stored them. A reader fetches
//! the table and only the chunks it needs (ranged reads), and checks each. A table or chunk whose
//! stored bytes do not match its checksum, or do not decompress to the recorded length, is
//! refused: corruption gives an error, never wrong bytes. A chunk of zeros (a hole inside a block,
//! or zeros written) stores nothing: its entry says so ([`ZERO_CHUNK`]). Objects of the first
//! format (one piece, `chunk_size` 0 in the block map) are still read whole.
//!
//! The checksums are XXH3: it catches corruption (bit rot, truncated or swapped objects) at
//! memory speed; it is not a defence against someone forging objects in the bucket. On an
//! encrypted volume each chunk's stored bytes (compressed first) and the table are sealed with
//! AES-256-GCM ([`SealAt`], docs/encryption.md): [`SEAL_OVERHEAD`] bytes more each, bound to the
//! volume, the object that holds them and their index, so a changed, moved or foreign chunk
//! fails to open (EIO). The checksums are then over the sealed bytes.

use std::sync::Arc;

use bytes::Bytes;

use crate::crypto::{SEAL_OVERHEAD, TABLE_INDEX, VolumeKeys};
use crate::wire::pb::compression::Kind;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("block checksum mismatch (stored object corrupted or replaced)")]
    Checksum,
    #[error("block does not decompress ({0})")]
    Decompress(String),
    #[error("block decompresses to {got} bytes, the block map says {want}")]
    Length { got: usize, want: usize },
    #[error(
        "sealed block bytes do not open with the volume's key (changed, moved from another object or index, or of another volume)"
    )]
    Sealed,
    #[error("sealing a block failed: {0}")]
    Seal(String),
}

/// Where sealed bytes of an encrypted volume belong: the volume's keys, the block object that
/// holds them and the chunk's index in it ([`TABLE_INDEX`] for the table).
#[derive(Clone, Copy)]
pub struct SealAt<'a> {
    pub keys: &'a VolumeKeys,
    pub object: u64,
    pub index: u32,
}

impl SealAt<'_> {
    fn seal(&self, plain: &[u8]) -> Result<Bytes, CodecError> {
        let sealed = self.keys.seal_chunk(self.object, self.index, plain);
        Ok(Bytes::from(sealed.map_err(|e| CodecError::Seal(e.to_string()))?))
    }

    fn open(&self, sealed: &[u8]) -> Result<Bytes, CodecError> {
        Ok(Bytes::from(self.keys.open_chunk(self.object, self.index, sealed).map_err(|_| CodecError::Sealed)?))
    }
}

pub fn checksum(stored: &[u8]) -> Vec<u8> {
    twox_hash::XxHash3_128::oneshot(stored).to_le_bytes().to_vec()
}

/// Logical bytes per chunk of a block object: the unit of ranged reads and of their checks.
pub const CHUNK_SIZE: usize = 64 * 1024;
/// Bytes per chunk-table entry: the object holding the chunk (u64 LE, 0 for this object), its
/// offset there (u64 LE), stored length (u32 LE), compression kind (u32 LE), XXH3-64 of the stored
/// bytes (u64 LE).
pub const ENTRY_LEN: usize = 32;

/// The compression kind of a chunk that is all zeros: no object holds it (object 0, offset 0,
/// stored length 0, the checksum of no bytes) and it reads as zeros.
pub const ZERO_CHUNK: u32 = u32::MAX;

/// Zeros to share without allocating: holes, a read past a block's data, zero chunks.
pub static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

/// Whether `data` is all zeros (a memcmp against [`ZEROS`]: stops at the first other byte).
fn is_zero(data: &[u8]) -> bool {
    data.chunks(ZEROS.len()).all(|d| d == &ZEROS[..d.len()])
}

/// A range of a shared buffer, as `Bytes` without a copy.
struct Slice(Arc<Vec<u8>>, std::ops::Range<usize>);

impl AsRef<[u8]> for Slice {
    fn as_ref(&self) -> &[u8] {
        &self.0[self.1.clone()]
    }
}

/// A block encoded for upload: the object is `parts` in order (the chunk table as stored, then
/// the stored bytes of the chunks it holds itself), `checksum` is the stored table's.
#[derive(Debug)]
pub struct Encoded {
    pub parts: Vec<Bytes>,
    /// The chunk table, open (what a reader's L1 keeps).
    pub table: Bytes,
    pub stored_len: u32,
    pub checksum: Vec<u8>,
    pub chunk_size: u32,
    pub chunks: u32,
    /// The volume's compression if any chunk this object holds was stored compressed.
    pub kind: Kind,
    /// Other block objects whose chunks the table names, ascending.
    pub shared: Vec<u64>,
}

/// The block a rewrite is built on: its object id and (verified) chunk table.
pub struct Base<'a> {
    pub id: u64,
    pub table: &'a [u8],
}

/// Encodes the first `len` bytes of a block in chunks of [`CHUNK_SIZE`]: each chunk compressed
/// on its own as the volume says (stored as is where that does not shrink it, without copying)
/// and checksummed, so a reader can fetch and check any chunk alone.
#[cfg(test)]
pub fn encode(data: Arc<Vec<u8>>, len: usize, kind: Kind) -> Encoded {
    let chunks = chunks(&data, len);
    encode_over(len, kind, None, None, |c| chunks.get(&c).cloned()).expect("nothing to seal")
}

/// [`encode`] for a block rewritten over `base`, from its chunks: `chunk(c)` gives the bytes of
/// chunk `c` (exactly the chunk's length in a block of `len` bytes) where they may differ from the
/// base's, and `None` where the chunk is the base's, unchanged: its table entry is copied (naming
/// the object that holds it), so the new object holds only the chunks that changed. `None` is
/// allowed only for chunks the base holds whole (inside its valid length). With `seal` (the keys
/// of an encrypted volume and this object's id) every chunk it stores and the table are sealed.
pub fn encode_over(
    len: usize,
    kind: Kind,
    base: Option<Base<'_>>,
    seal: Option<(&VolumeKeys, u64)>,
    chunk: impl Fn(u32) -> Option<Bytes>,
) -> Result<Encoded, CodecError> {
    let chunks = len.div_ceil(CHUNK_SIZE) as u32;
    let at = |index| seal.map(|(keys, object)| SealAt { keys, object, index });
    let mut table = Vec::with_capacity(chunks as usize * ENTRY_LEN);
    let mut parts = Vec::with_capacity(chunks as usize + 1);
    let mut shared = std::collections::BTreeSet::new();
    let mut any = false;
    let mut offset = stored_table_len(chunks, seal.is_some()) as u64;
    for c in 0..chunks {
        let Some(raw) = chunk(c) else {
            let base = base.as_ref().filter(|b| c < (b.table.len() / ENTRY_LEN) as u32);
            let base = base.expect("an unchanged chunk needs a base that holds it");
            let mut e = base.table[c as usize * ENTRY_LEN..(c as usize + 1) * ENTRY_LEN].to_vec();
            if self::chunk(base.table, c).is_zero() {
                table.extend_from_slice(&e);
                continue;
            }
            let object = match u64::from_le_bytes(e[..8].try_into().expect("8 bytes")) {
                0 => base.id,
                other => other,
            };
            e[..8].copy_from_slice(&object.to_le_bytes());
            shared.insert(object);
            table.extend_from_slice(&e);
            continue;
        };
        debug_assert_eq!(raw.len(), (len - c as usize * CHUNK_SIZE).min(CHUNK_SIZE), "chunk {c} of a {len}-byte block");
        if is_zero(&raw) {
            push_entry(&mut table, 0, 0, ZERO_CHUNK, &[]);
            continue;
        }
        let compressed = match kind {
            Kind::Lz4 => Some(lz4_flex::compress_prepend_size(&raw)),
            Kind::Zstd => zstd::bulk::compress(&raw, 3).ok(),
            Kind::None | Kind::Unspecified => None,
        };
        let (stored, used) = match compressed {
            Some(z) if z.len() < raw.len() => (Bytes::from(z), kind),
            _ => (raw, Kind::None),
        };
        any |= used != Kind::None;
        let stored = match at(c) {
            Some(at) => at.seal(&stored)?,
            None => stored,
        };
        push_entry(&mut table, 0, offset, used as i32 as u32, &stored);
        offset += stored.len() as u64;
        parts.push(stored);
    }
    let table = Bytes::from(table);
    let stored_table = match at(TABLE_INDEX) {
        Some(at) => at.seal(&table)?,
        None => table.clone(),
    };
    let checksum = checksum(&stored_table);
    parts.insert(0, stored_table);
    Ok(Encoded {
        stored_len: parts.iter().map(|p| p.len() as u32).sum(),
        parts,
        table,
        checksum,
        chunk_size: CHUNK_SIZE as u32,
        chunks,
        kind: if any { kind } else { Kind::None },
        shared: shared.into_iter().collect(),
    })
}

/// Appends the table entry of a chunk held by `object` (0: this object) at `offset`, stored as
/// `stored` with compression `kind` (see [`ENTRY_LEN`]).
fn push_entry(table: &mut Vec<u8>, object: u64, offset: u64, kind: u32, stored: &[u8]) {
    table.extend_from_slice(&object.to_le_bytes());
    table.extend_from_slice(&offset.to_le_bytes());
    table.extend_from_slice(&(stored.len() as u32).to_le_bytes());
    table.extend_from_slice(&kind.to_le_bytes());
    table.extend_from_slice(&twox_hash::XxHash3_64::oneshot(stored).to_le_bytes());
}

/// The chunks of the first `len` bytes of a block held in one buffer, shared without a copy.
#[cfg(test)]
pub fn chunks(data: &Arc<Vec<u8>>, len: usize) -> std::collections::BTreeMap<u32, Bytes> {
    (0..len.div_ceil(CHUNK_SIZE))
        .map(|c| (c as u32, share(data, c * CHUNK_SIZE..((c + 1) * CHUNK_SIZE).min(len))))
        .collect()
}

/// `range` of a shared buffer as `Bytes`, without a copy.
pub fn share(data: &Arc<Vec<u8>>, range: std::ops::Range<usize>) -> Bytes {
    Bytes::from_owner(Slice(data.clone(), range))
}

/// Bytes of the (open) chunk table of an object with `chunks` chunks.
pub fn table_len(chunks: u32) -> usize {
    chunks as usize * ENTRY_LEN
}

/// Bytes the chunk table takes at the start of the object (sealed: [`SEAL_OVERHEAD`] more).
pub fn stored_table_len(chunks: u32, sealed: bool) -> usize {
    table_len(chunks) + if sealed { SEAL_OVERHEAD } else { 0 }
}

/// Checks a fetched chunk table against the block map's checksum and opens it (`seal`: the
/// object's place, on an encrypted volume); returns the open table.
pub fn open_table(stored: Bytes, chunks: u32, sum: &[u8], seal: Option<SealAt<'_>>) -> Result<Bytes, CodecError> {
    if stored.len() != stored_table_len(chunks, seal.is_some()) || checksum(&stored) != sum {
        return Err(CodecError::Checksum);
    }
    match seal {
        Some(at) => at.open(&stored),
        None => Ok(stored),
    }
}

/// One chunk's entry in a (verified) chunk table.
pub struct Chunk {
    /// The block object holding the chunk; `None`: the table's own object.
    pub object: Option<u64>,
    /// Where the chunk's stored bytes are in that object.
    pub range: std::ops::Range<u64>,
    kind: i32,
    sum: u64,
}

impl Chunk {
    /// A chunk of zeros: nothing to fetch.
    pub fn is_zero(&self) -> bool {
        self.kind as u32 == ZERO_CHUNK
    }
}

/// The entry of chunk `c` in a verified table.
pub fn chunk(table: &[u8], c: u32) -> Chunk {
    let e = &table[c as usize * ENTRY_LEN..(c as usize + 1) * ENTRY_LEN];
    let u64_at = |i: usize| u64::from_le_bytes(e[i..i + 8].try_into().expect("8 bytes"));
    let u32_at = |i: usize| u32::from_le_bytes(e[i..i + 4].try_into().expect("4 bytes"));
    let (object, offset, stored_len) = (u64_at(0), u64_at(8), u32_at(16) as u64);
    Chunk {
        object: (object != 0).then_some(object),
        range: offset..offset + stored_len,
        kind: u32_at(20) as i32,
        sum: u64_at(24),
    }
}

/// Decodes one chunk's stored bytes after checking them (and opening them where `seal` gives
/// their place); it must hold at least `want` bytes (the block map's valid length may end inside
/// or before it) and at most `chunk_size`.
pub fn decode_chunk(
    chunk: &Chunk,
    stored: Bytes,
    want: usize,
    chunk_size: usize,
    seal: Option<SealAt<'_>>,
) -> Result<Bytes, CodecError> {
    if twox_hash::XxHash3_64::oneshot(&stored) != chunk.sum {
        return Err(CodecError::Checksum);
    }
    if chunk.is_zero() {
        return match stored.is_empty() && want <= chunk_size.min(ZEROS.len()) {
            true => Ok(Bytes::from_static(&ZEROS[..want])),
            false => Err(CodecError::Length { got: stored.len(), want: 0 }),
        };
    }
    let stored = match seal {
        Some(at) => at.open(&stored)?,
        None => stored,
    };
    let data = match Kind::try_from(chunk.kind) {
        Ok(Kind::Lz4) => {
            lz4_flex::decompress_size_prepended(&stored).map_err(|e| CodecError::Decompress(e.to_string()))?.into()
        }
        Ok(Kind::Zstd) => {
            zstd::stream::decode_all(&stored[..]).map_err(|e| CodecError::Decompress(e.to_string()))?.into()
        }
        Ok(Kind::None | Kind::Unspecified) => stored,
        Err(_) => return Err(CodecError::Decompress(format!("unknown compression kind {}", chunk.kind))),
    };
    if data.len() < want || data.len() > chunk_size {
        return Err(CodecError::Length { got: data.len(), want });
    }
    Ok(data)
}

/// Decodes a single-piece block (the first format, `chunk_size` 0) after checking its checksum. `len` is the block's valid length in
/// the block map, which a truncate may have lowered below the object's own: the object decodes
/// whole (both formats record their length) and must hold at least `len` bytes.
pub fn decode(stored: Bytes, kind: Kind, len: usize, sum: &[u8]) -> Result<Bytes, CodecError> {
    if checksum(&stored) != sum {
        return Err(CodecError::Checksum);
    }
    let data = match kind {
        Kind::Lz4 => {
            lz4_flex::decompress_size_prepended(&stored).map_err(|e| CodecError::Decompress(e.to_string()))?.into()
        }
        Kind::Zstd => zstd::stream::decode_all(&stored[..]).map_err(|e| CodecError::Decompress(e.to_string()))?.into(),
        // Stored as is: the fetched buffer itself, no copy.
        Kind::None | Kind::Unspecified => stored,
    };
    if data.len() < len {
        return Err(CodecError::Length { got: data.len(), want: len });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(e: &Encoded) -> Bytes {
        e.parts.concat().into()
    }

    /// Every chunk of an encoded block, read through the table as a reader does.
    fn read_all(obj: &Bytes, e: &Encoded, want: usize) -> Result<Vec<u8>, CodecError> {
        let table = open_table(obj.slice(..table_len(e.chunks)), e.chunks, &e.checksum, None)?;
        let mut out = Vec::new();
        for c in 0..e.chunks {
            let ch = chunk(&table, c);
            let stored = obj.slice(ch.range.start as usize..ch.range.end as usize);
            let w = want.saturating_sub(c as usize * CHUNK_SIZE).min(CHUNK_SIZE);
            out.extend_from_slice(&decode_chunk(&ch, stored, w, CHUNK_SIZE, None)?);
        }
        Ok(out)
    }

    #[test]
    fn chunked_blocks_round_trip_and_each_chunk_is_checked() {
        let len = 3 * CHUNK_SIZE + 1000;
        let data: Arc<Vec<u8>> = Arc::new((0..len as u32).map(|i| (i % 251) as u8).collect());
        for kind in [Kind::None, Kind::Lz4, Kind::Zstd] {
            let e = encode(data.clone(), len, kind);
            assert_eq!((e.chunks, e.kind), (4, kind), "compressible data is compressed");
            let obj = object(&e);
            assert_eq!(obj.len(), e.stored_len as usize);
            assert_eq!(read_all(&obj, &e, len).unwrap(), *data);
            // A chunk's stored bytes changed: that chunk fails, the table still verifies.
            let table = &obj[..table_len(e.chunks)];
            let mut bad = obj.to_vec();
            let r = chunk(table, 2).range;
            bad[(r.start + r.end) as usize / 2] ^= 1;
            assert_eq!(read_all(&bad.into(), &e, len), Err(CodecError::Checksum));
            // The table changed: refused before any chunk is trusted.
            let mut bad = obj.to_vec();
            bad[3] ^= 1;
            assert_eq!(read_all(&bad.into(), &e, len), Err(CodecError::Checksum));
        }
        // A prefix of the data encodes only its chunks; a lowered valid length still reads.
        let e = encode(data.clone(), 1000, Kind::None);
        assert_eq!(e.chunks, 1);
        assert_eq!(read_all(&object(&e), &e, 10).unwrap(), data[..1000]);
        // A chunk shorter than the valid length says so.
        assert!(matches!(read_all(&object(&e), &e, 1001), Err(CodecError::Length { .. })));
        // Incompressible chunks are stored as is, without a copy of the block.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let noise: Arc<Vec<u8>> = Arc::new(
            (0..CHUNK_SIZE)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 24) as u8
                })
                .collect(),
        );
        let e = encode(noise.clone(), CHUNK_SIZE, Kind::Lz4);
        assert_eq!(e.kind, Kind::None);
        assert_eq!(e.parts[1].as_ptr(), noise.as_ptr());
    }

    #[test]
    fn zero_chunks_store_nothing_and_read_as_zeros() {
        let len = 3 * CHUNK_SIZE + 10;
        let mut data = vec![0u8; len];
        data[CHUNK_SIZE + 5] = 7;
        let e = encode(Arc::new(data.clone()), len, Kind::None);
        // Only the chunk holding a 7 is stored; the last, short chunk of zeros is not either.
        assert_eq!(e.stored_len as usize, table_len(4) + CHUNK_SIZE);
        let obj = object(&e);
        assert_eq!(read_all(&obj, &e, len).unwrap(), data);
        let table = &obj[..table_len(4)];
        assert!(chunk(table, 0).is_zero() && !chunk(table, 1).is_zero() && chunk(table, 3).is_zero());
        // A zero entry claiming stored bytes is refused.
        assert!(decode_chunk(&chunk(table, 0), Bytes::from_static(b"x"), 10, CHUNK_SIZE, None).is_err());
        // A rewrite over it copies the zero entries as they are: they name no object.
        let base = Base { id: 42, table };
        let fresh = Bytes::from(vec![1u8; CHUNK_SIZE]);
        let r = encode_over(len, Kind::Lz4, Some(base), None, |c| (c == 2).then(|| fresh.clone())).unwrap();
        assert_eq!(r.shared, vec![42], "only the chunk with data is shared");
        let t = &r.parts[0];
        assert!(chunk(t, 0).is_zero() && chunk(t, 3).is_zero());
        assert_eq!(chunk(t, 1).object, Some(42));
    }

    #[test]
    fn sealed_blocks_open_only_in_their_place() {
        let keys = crate::crypto::tests::keys("vol-a");
        let len = 3 * CHUNK_SIZE + 7;
        let data: Vec<u8> = (0..len as u32).map(|i| (i % 251) as u8).collect();
        let chunks = chunks(&Arc::new(data.clone()), len);
        let e = encode_over(len, Kind::Lz4, None, Some((&keys, 9)), |c| chunks.get(&c).cloned()).unwrap();
        let obj = object(&e);
        // No 16-byte window of the data is in the object; the open table is the reader's.
        assert!(!data.windows(16).step_by(97).any(|w| obj.windows(16).any(|o| o == w)));
        let sealed_len = stored_table_len(e.chunks, true);
        let at = |object, index| Some(SealAt { keys: &keys, object, index });
        let table = open_table(obj.slice(..sealed_len), e.chunks, &e.checksum, at(9, TABLE_INDEX)).unwrap();
        assert_eq!(table, e.table);
        let mut out = Vec::new();
        for c in 0..e.chunks {
            let ch = chunk(&table, c);
            let stored = obj.slice(ch.range.start as usize..ch.range.end as usize);
            let want = (len - c as usize * CHUNK_SIZE).min(CHUNK_SIZE);
            out.extend_from_slice(&decode_chunk(&ch, stored.clone(), want, CHUNK_SIZE, at(9, c)).unwrap());
            // The same bytes read as another object's, or at another index, do not open.
            assert_eq!(decode_chunk(&ch, stored.clone(), want, CHUNK_SIZE, at(10, c)), Err(CodecError::Sealed));
            assert_eq!(decode_chunk(&ch, stored, want, CHUNK_SIZE, at(9, c + 1)), Err(CodecError::Sealed));
        }
        assert_eq!(out, data);
        let other = crate::crypto::tests::keys("vol-b");
        let foreign = Some(SealAt { keys: &other, object: 9, index: TABLE_INDEX });
        assert_eq!(open_table(obj.slice(..sealed_len), e.chunks, &e.checksum, foreign), Err(CodecError::Sealed));
        // A rewrite over it shares the chunks it did not change, held (and sealed) by object 9.
        let fresh = Bytes::from(vec![1u8; CHUNK_SIZE]);
        let base = Base { id: 9, table: &table };
        let r =
            encode_over(len, Kind::Lz4, Some(base), Some((&keys, 11)), |c| (c == 1).then(|| fresh.clone())).unwrap();
        assert_eq!((r.shared.clone(), chunk(&r.table, 0).object, chunk(&r.table, 1).object), (vec![9], Some(9), None));
    }

    #[test]
    fn single_piece_blocks_still_decode() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let stored = lz4_flex::compress_prepend_size(&data);
        let sum = checksum(&stored);
        assert_eq!(decode(stored.clone().into(), Kind::Lz4, data.len(), &sum).unwrap(), data);
        assert_eq!(&decode(stored.clone().into(), Kind::Lz4, 1000, &sum).unwrap()[..1000], &data[..1000]);
        let mut bad = stored.clone();
        bad[stored.len() / 2] ^= 1;
        assert_eq!(decode(bad.into(), Kind::Lz4, data.len(), &sum), Err(CodecError::Checksum));
        assert_eq!(decode(data.clone().into(), Kind::None, data.len(), &checksum(&data)).unwrap(), data);
    }
}
