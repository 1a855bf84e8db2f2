//! How a block's bytes are stored: compressed as the volume says, with a checksum of the stored
//! bytes kept in the block map. A block whose stored bytes do not match the checksum, or do not
//! decompress to the recorded length, is refused: corruption gives an error, never wrong bytes.
//!
//! The checksum is XXH3-128: it catches corruption (bit rot, truncated or swapped objects) at
//! memory speed; it is not a defence against someone forging objects in the bucket (encrypted
//! volumes authenticate every block with AES-GCM, [4/6]).

use std::sync::Arc;

use bytes::Bytes;

use crate::proto::pb::compression::Kind;

/// Bytes of a block's checksum.
pub const CHECKSUM_LEN: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("block checksum mismatch (stored object corrupted or replaced)")]
    Checksum,
    #[error("block does not decompress ({0})")]
    Decompress(String),
    #[error("block decompresses to {got} bytes, the block map says {want}")]
    Length { got: usize, want: usize },
}

pub fn checksum(stored: &[u8]) -> Vec<u8> {
    twox_hash::XxHash3_128::oneshot(stored).to_le_bytes().to_vec()
}

/// The first `len` bytes of a shared buffer, as `Bytes` without a copy.
struct Prefix(Arc<Vec<u8>>, usize);

impl AsRef<[u8]> for Prefix {
    fn as_ref(&self) -> &[u8] {
        &self.0[..self.1]
    }
}

/// [`encode`] for the first `len` bytes of a shared buffer: uncompressed blocks are stored
/// without copying them.
pub fn encode_shared(data: Arc<Vec<u8>>, len: usize, kind: Kind) -> (Bytes, Vec<u8>, Kind) {
    let (stored, sum, used) = match kind {
        Kind::None | Kind::Unspecified => {
            let sum = checksum(&data[..len]);
            return (Bytes::from_owner(Prefix(data, len)), sum, Kind::None);
        }
        _ => encode(&data[..len], kind),
    };
    (Bytes::from(stored), sum, used)
}

/// Encodes a block: returns the bytes to store and their checksum. Compression that does not
/// shrink the block is skipped (the block is then stored with `Kind::None`); the kind used is
/// returned.
pub fn encode(data: &[u8], kind: Kind) -> (Vec<u8>, Vec<u8>, Kind) {
    let compressed = match kind {
        Kind::Lz4 => Some(lz4_flex::compress_prepend_size(data)),
        Kind::Zstd => zstd::bulk::compress(data, 3).ok(),
        Kind::None | Kind::Unspecified => None,
    };
    let (stored, used) = match compressed {
        Some(c) if c.len() < data.len() => (c, kind),
        _ => (data.to_vec(), Kind::None),
    };
    let sum = checksum(&stored);
    (stored, sum, used)
}

/// Decodes a stored block after checking its checksum. `len` is the block's valid length in
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

    #[test]
    fn round_trips_and_detects_corruption() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for kind in [Kind::None, Kind::Lz4, Kind::Zstd] {
            let (stored, sum, used) = encode(&data, kind);
            assert_eq!(used, kind, "compressible data is compressed");
            assert_eq!(decode(stored.clone().into(), used, data.len(), &sum).unwrap(), data);
            // A truncate lowers the valid length below the object's.
            assert_eq!(&decode(stored.clone().into(), used, 1000, &sum).unwrap()[..1000], &data[..1000]);
            let mut bad = stored.clone();
            bad[stored.len() / 2] ^= 1;
            assert_eq!(decode(bad.into(), used, data.len(), &sum), Err(CodecError::Checksum));
        }
        // Incompressible data is stored as is.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        let (_, _, used) = encode(&noise, Kind::Lz4);
        assert_eq!(used, Kind::None);
    }
}
