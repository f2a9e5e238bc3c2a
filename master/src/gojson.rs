//! Byte-level compatibility with what the reference master writes: JSON encoded as Go's
//! `encoding/json` does (HTML characters and U+2028/U+2029 escaped, a `\n` after every
//! body), times in Go's RFC 3339 form with nanoseconds and the local offset, and log lines in
//! the reference's `YYYY-MM-DD HH:MM:SS.mmm  LEVEL  message` layout.
//!
//! Dashboards parse the JSON, so the escaping only matters to people diffing our answers
//! against the Go program's; it costs nothing on the hot path (one pass over the string).

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use nodepass_proto::report::ReportLevel;
use serde::Serialize;

/// A serde_json formatter that escapes like Go's `json.Marshal`.
struct GoFormatter;

impl serde_json::ser::Formatter for GoFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        // This runs for every string of every answer: find the next byte that may need an
        // escape with a vectorizable search. `<`, `>`, `&` are ASCII; U+2028/U+2029 are
        // E2 80 A8/A9 in UTF-8.
        let bytes = fragment.as_bytes();
        let special = |b: &u8| matches!(*b, b'<' | b'>' | b'&' | 0xE2);
        let mut start = 0;
        while let Some(off) = bytes[start..].iter().position(special) {
            let i = start + off;
            let (esc, len): (&[u8], usize) = match bytes[i] {
                b'<' => (b"\\u003c", 1),
                b'>' => (b"\\u003e", 1),
                b'&' => (b"\\u0026", 1),
                _ => match bytes.get(i + 1..i + 3) {
                    Some([0x80, 0xA8]) => (b"\\u2028", 3),
                    Some([0x80, 0xA9]) => (b"\\u2029", 3),
                    // Another character starting with E2: keep it as it is.
                    _ => {
                        writer.write_all(&bytes[start..=i])?;
                        start = i + 1;
                        continue;
                    }
                },
            };
            writer.write_all(&bytes[start..i])?;
            writer.write_all(esc)?;
            start = i + len;
        }
        writer.write_all(&bytes[start..])
    }
}

/// Encodes `value` as Go would, without the trailing newline.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write(&mut out, value);
    out
}

/// Appends the Go encoding of `value` to `out`.
pub fn write<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let mut ser = serde_json::Serializer::with_formatter(&mut *out, GoFormatter);
    // Our types serialize infallibly (plain structs, string maps): an error here would be
    // a programming mistake, and writing `null` keeps the answer well-formed regardless.
    if value.serialize(&mut ser).is_err() {
        out.extend_from_slice(b"null");
    }
}

/// Broken-down local time of a moment.
struct LocalTime {
    year: i32,
    month: u32,
    day: u32,
    hour: u32,
    min: u32,
    sec: u32,
    nanos: u32,
    /// Offset from UTC in seconds.
    offset: i64,
}

fn local_time(t: SystemTime) -> LocalTime {
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(_) => (0, 0),
    };
    let raw: libc::time_t = secs as libc::time_t;
    // SAFETY: localtime_r only writes the struct we hand it; a zeroed tm is a valid value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&raw, &mut tm).is_null() };
    if !ok {
        // No zone information available: fall back to UTC arithmetic.
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        return LocalTime {
            year: y,
            month: m,
            day: d,
            hour: (rem / 3600) as u32,
            min: (rem % 3600 / 60) as u32,
            sec: (rem % 60) as u32,
            nanos,
            offset: 0,
        };
    }
    LocalTime {
        year: tm.tm_year + 1900,
        month: (tm.tm_mon + 1) as u32,
        day: tm.tm_mday as u32,
        hour: tm.tm_hour as u32,
        min: tm.tm_min as u32,
        sec: tm.tm_sec as u32,
        nanos,
        offset: tm.tm_gmtoff,
    }
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i32, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y } as i32, m, d)
}

/// Go's `time.RFC3339Nano` rendering of `t` in local time: up to nine fractional digits with
/// trailing zeros dropped, `Z` for UTC, else `+hh:mm`.
pub fn rfc3339_nano(t: SystemTime) -> String {
    let lt = local_time(t);
    let mut s = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        lt.year, lt.month, lt.day, lt.hour, lt.min, lt.sec
    );
    if lt.nanos != 0 {
        let frac = format!("{:09}", lt.nanos);
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    if lt.offset == 0 {
        s.push('Z');
    } else {
        let sign = if lt.offset < 0 { '-' } else { '+' };
        let off = lt.offset.abs();
        s.push_str(&format!("{sign}{:02}:{:02}", off / 3600, off % 3600 / 60));
    }
    s
}

/// `YYYY-MM-DD HH:MM:SS.mmm` in local time, the reference's log timestamp.
pub fn log_timestamp(t: SystemTime) -> String {
    let lt = local_time(t);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}",
        lt.year,
        lt.month,
        lt.day,
        lt.hour,
        lt.min,
        lt.sec,
        lt.nanos / 1_000_000
    )
}

/// The ANSI colour the reference's logger gives each level.
fn level_colour(level: ReportLevel) -> &'static str {
    match level {
        ReportLevel::Debug => "\x1b[34m",
        ReportLevel::Info => "\x1b[32m",
        ReportLevel::Warn => "\x1b[33m",
        ReportLevel::Error => "\x1b[31m",
        ReportLevel::Event => "\x1b[36m",
    }
}

/// One log line in the reference's text form, colour codes included (the `logs` field of
/// SSE `log` events carries exactly this, so dashboards that render it keep working).
pub fn log_line(t: SystemTime, level: ReportLevel, message: &str, colour: bool) -> String {
    if colour {
        format!(
            "{}  {}{}\x1b[0m  {}",
            log_timestamp(t),
            level_colour(level),
            level.upper(),
            message
        )
    } else {
        format!("{}  {}  {}", log_timestamp(t), level.upper(), message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn escapes_like_go() {
        let v = serde_json::json!({"config": "a?b=1&c=<2>\u{2028}", "n": 5});
        assert_eq!(
            String::from_utf8(to_vec(&v)).unwrap(),
            r#"{"config":"a?b=1\u0026c=\u003c2\u003e\u2028","n":5}"#
        );
        // Other characters starting with the same UTF-8 byte (E2) stay as they are.
        let v = serde_json::json!("€ \u{2029} ‚ x\u{2028}");
        assert_eq!(
            String::from_utf8(to_vec(&v)).unwrap(),
            "\"€ \\u2029 ‚ x\\u2028\""
        );
        // Control characters keep serde's escapes, which Go reads the same.
        assert_eq!(to_vec("\u{1b}[32m"), br#""\u001b[32m""#.to_vec());
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_416), (2025, 11, 24));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn rfc3339_shapes() {
        let t = UNIX_EPOCH + Duration::new(1_764_056_060, 950_229_130);
        let s = rfc3339_nano(t);
        // Whatever the local zone, the fraction drops trailing zeros.
        assert!(s.contains(".95022913"), "{s}");
        assert!(!s.contains(".950229130"), "{s}");
        let whole = rfc3339_nano(UNIX_EPOCH + Duration::from_secs(1_764_056_060));
        assert!(!whole.contains('.'), "{whole}");
        assert_eq!(log_timestamp(t).len(), "2026-11-25 07:34:20.950".len());
    }

    #[test]
    fn log_line_form() {
        let line = log_line(UNIX_EPOCH, ReportLevel::Info, "Client started", true);
        assert!(
            line.ends_with("  \x1b[32mINFO\x1b[0m  Client started"),
            "{line:?}"
        );
        let plain = log_line(UNIX_EPOCH, ReportLevel::Warn, "x", false);
        assert!(plain.ends_with("  WARN  x"));
    }
}
