//! Any bytes as a Go master's state file: `nodepass import` must refuse or accept them,
//! never panic, hang or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = nodepass_master::import::decode_gob(data).and_then(nodepass_master::import::to_snapshot);
});
