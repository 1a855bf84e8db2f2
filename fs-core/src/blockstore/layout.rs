//! Where block objects live in a bucket: `VOLUME-UUID/blocks/SS/ID` under the block store's
//! prefix, with `ID` as 16 hex digits and `SS` a shard of two hex digits derived from the id, so
//! consecutive ids spread over 256 key ranges (object stores partition by key prefix).

use object_store::path::Path;

/// The shard of a block id: the top byte of a multiplicative hash.
fn shard(id: u64) -> u8 {
    (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

/// The object key of block `id` of volume `volume`.
pub fn block_key(volume: &str, id: u64) -> Path {
    Path::from(format!("{volume}/blocks/{:02x}/{id:016x}", shard(id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_spread() {
        assert_eq!(block_key("v", 1).to_string(), format!("v/blocks/{:02x}/0000000000000001", shard(1)));
        let shards: std::collections::HashSet<u8> = (1..=1000).map(shard).collect();
        assert!(shards.len() > 200, "1000 consecutive ids use {} of 256 shards", shards.len());
    }
}
