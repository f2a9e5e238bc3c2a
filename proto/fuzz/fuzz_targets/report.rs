//! Fuzz target: any text as a worker's stdout line. Decoding must never panic, and every
//! report it recognises must survive a write and a read unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodepass_proto::report::{decode_line, ReportLine};

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    if let ReportLine::Report(report) = decode_line(&line) {
        let written = report.to_line();
        assert!(!written.contains('\n'), "{written:?}");
        assert_eq!(decode_line(&written), ReportLine::Report(report));
    }
});
