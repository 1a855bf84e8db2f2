//! Everything the metadata server decodes from the network or its database: request messages,
//! database records, block-store specs (`fs_core::testkit::decode_any`). Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((&which, bytes)) = data.split_first() {
        fs_core::testkit::decode_any(which, bytes);
    }
});
