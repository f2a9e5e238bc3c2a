//! Fuzz target: any bytes as a control-channel line, decoded with a few keys (one byte, a
//! typical key, the derived key of port 10101, an empty key). Decoding must never panic,
//! and every signal that decodes must encode to a line that decodes to the same signal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodepass_proto::url::TunnelKey;
use nodepass_proto::wire::Signal;

fuzz_target!(|data: &[u8]| {
    for key in ["k", "secret-key", "e68be2b4", ""] {
        let key = TunnelKey::new(key);
        if let Ok(signal) = Signal::decode(data, &key) {
            let line = signal.encode(&key);
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(Signal::decode(&line, &key).as_ref(), Ok(&signal), "{signal:?}");
        }
    }
    // The JSON layer on its own, too.
    if let Ok(signal) = Signal::from_json(data) {
        assert_eq!(
            Signal::from_json(signal.to_json().as_bytes()).as_ref(),
            Ok(&signal)
        );
    }
});
