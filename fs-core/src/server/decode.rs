//! What the server decodes from the network and from its database, for the fuzz target
//! (`fs-core/fuzz`) and a property test: decoding must never panic, whatever the bytes.

use crate::wire::{pb, rec};

/// Decodes `bytes` as one of the messages the server reads from the network or its database
/// (chosen by `which`), discarding the result.
pub fn decode_any(which: u8, bytes: &[u8]) {
    use prost::Message;
    match which % 16 {
        0 => drop(rec::Inode::decode(bytes)),
        1 => drop(rec::Dentry::decode(bytes)),
        2 => drop(rec::Block::decode(bytes)),
        3 => drop(rec::Counters::decode(bytes)),
        4 => {
            if let Ok(l) = rec::LockList::decode(bytes) {
                for r in &l.locks {
                    let _ = crate::server::locks::Lock::from_rec(r);
                }
            }
        }
        5 => drop(rec::Session::decode(bytes)),
        6 => drop(rec::Token::decode(bytes)),
        7 => drop(rec::OpenFile::decode(bytes)),
        8 => drop(rec::QuotaDir::decode(bytes)),
        9 => drop(pb::VolumeInfo::decode(bytes)),
        10 => drop(pb::CommitBlocksRequest::decode(bytes)),
        11 => drop(pb::SetAttrRequest::decode(bytes)),
        12 => drop(pb::RenameRequest::decode(bytes)),
        13 => drop(pb::LockRequest::decode(bytes)),
        14 => drop(pb::OpenSessionRequest::decode(bytes)),
        _ => drop(serde_json::from_slice::<crate::blockstore::BackendSpec>(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn decoding_arbitrary_bytes_never_panics(which in 0u8..16, bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            super::decode_any(which, &bytes);
        }
    }
}
