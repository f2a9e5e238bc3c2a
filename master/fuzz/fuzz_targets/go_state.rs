//! Any bytes as a Go master's state file: `nodepass import` must refuse or accept them,
//! never panic, hang or allocate without bound.
//!
//! `decode_gob` turns a panic inside the gob decoder into an error (catch_unwind);
//! libfuzzer-sys's panic hook would abort even on such a caught panic, so the hook is
//! silenced at start. A panic anywhere else still escapes the target and is reported.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        std::panic::set_hook(Box::new(|_| {}));
    },
    |data: &[u8]| {
        let _ = nodepass_master::import::decode_gob(data)
            .and_then(nodepass_master::import::to_snapshot);
    }
);
