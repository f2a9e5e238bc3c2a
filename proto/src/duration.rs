//! Go-style durations (`500ms`, `1m30s`, `0`), parsed and rendered exactly as Go's
//! `time.ParseDuration` and `time.Duration.String` do, because NodePass URLs and NP_*
//! variables carry them and the canonical `config` string must render them the same way.

use std::time::Duration;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("negative duration")]
    Negative,
    #[error("missing unit in duration (use ns, us, ms, s, m or h, e.g. 500ms or 1m30s)")]
    MissingUnit,
    #[error("unknown unit {0:?} in duration (use ns, us, ms, s, m or h)")]
    UnknownUnit(String),
    #[error("invalid duration syntax")]
    Syntax,
    #[error("duration out of range")]
    Overflow,
}

/// Parses a Go duration string exactly as Go's `time.ParseDuration` does (including its
/// floating-point handling of fractions, so `0.999999999999h` gives the same nanoseconds).
/// Negative values are refused (no NodePass setting takes one); `-0` is zero.
pub fn parse_go_duration(s: &str) -> Result<Duration, DurationError> {
    const LIMIT: u64 = 1 << 63;
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let (neg, mut rest) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(DurationError::Syntax);
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let first = rest.as_bytes()[0];
        if !(first == b'.' || first.is_ascii_digit()) {
            return Err(DurationError::Syntax);
        }
        // Integer part: overflow is an error.
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let mut v: u64 = 0;
        for d in rest[..int_len].bytes() {
            if v > LIMIT / 10 {
                return Err(DurationError::Overflow);
            }
            v = v * 10 + u64::from(d - b'0');
            if v > LIMIT {
                return Err(DurationError::Overflow);
            }
        }
        rest = &rest[int_len..];
        // Fraction: digits beyond what fits are skipped, not an error.
        let (mut f, mut scale, mut post) = (0u64, 1f64, false);
        if let Some(r) = rest.strip_prefix('.') {
            let frac_len = r.bytes().take_while(u8::is_ascii_digit).count();
            let mut overflow = false;
            for d in r[..frac_len].bytes() {
                if overflow {
                    continue;
                }
                if f > (LIMIT - 1) / 10 {
                    overflow = true;
                    continue;
                }
                let y = f * 10 + u64::from(d - b'0');
                if y > LIMIT {
                    overflow = true;
                    continue;
                }
                f = y;
                scale *= 10.0;
            }
            post = frac_len > 0;
            rest = &r[frac_len..];
        }
        if int_len == 0 && !post {
            return Err(DurationError::Syntax);
        }
        let unit_len = rest
            .bytes()
            .take_while(|b| !b.is_ascii_digit() && *b != b'.')
            .count();
        let (unit, r) = rest.split_at(unit_len);
        rest = r;
        let unit: u64 = match unit {
            "" => return Err(DurationError::MissingUnit),
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            other => return Err(DurationError::UnknownUnit(other.to_string())),
        };
        if v > LIMIT / unit {
            return Err(DurationError::Overflow);
        }
        v *= unit;
        if f > 0 {
            // Go computes this in float64 and truncates; so do we, to match to the nanosecond.
            v += (f as f64 * (unit as f64 / scale)) as u64;
            if v > LIMIT {
                return Err(DurationError::Overflow);
            }
        }
        total += v;
        if total > LIMIT {
            return Err(DurationError::Overflow);
        }
    }
    if neg {
        return if total == 0 {
            Ok(Duration::ZERO)
        } else {
            Err(DurationError::Negative)
        };
    }
    if total > LIMIT - 1 {
        return Err(DurationError::Overflow);
    }
    Ok(Duration::from_nanos(total))
}

/// Renders a duration as Go's `time.Duration.String()` does: `0s`, `500ms`, `1.5s`,
/// `5m0s`, `1h0m0s`.
pub fn format_go_duration(d: Duration) -> String {
    let ns = d.as_nanos().min(i64::MAX as u128) as u64;
    if ns == 0 {
        return "0s".to_string();
    }
    if ns < 1_000_000_000 {
        return if ns < 1_000 {
            format!("{ns}ns")
        } else if ns < 1_000_000 {
            format!("{}µs", frac(ns, 3))
        } else {
            format!("{}ms", frac(ns, 6))
        };
    }
    let secs_total = ns / 1_000_000_000;
    let sub = ns % 1_000_000_000;
    let secs = secs_total % 60;
    let mins_total = secs_total / 60;
    let mut out = String::new();
    if mins_total > 0 {
        let hours = mins_total / 60;
        if hours > 0 {
            out.push_str(&format!("{hours}h"));
        }
        out.push_str(&format!("{}m", mins_total % 60));
    }
    let sec_str = frac(secs * 1_000_000_000 + sub, 9);
    out.push_str(&sec_str);
    out.push('s');
    out
}

/// `v / 10^prec` with the fraction printed without trailing zeros (Go's fmtFrac + fmtInt).
fn frac(v: u64, prec: u32) -> String {
    let div = 10u64.pow(prec);
    let int = v / div;
    let f = v % div;
    if f == 0 {
        return int.to_string();
    }
    let mut fs = format!("{:0width$}", f, width = prec as usize);
    while fs.ends_with('0') {
        fs.pop();
    }
    format!("{int}.{fs}")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected strings from Go: fmt.Println(time.Duration(x)) for each x below
    // (the same table as Go's own time/time_test.go durationTests).
    #[test]
    fn formats_like_go() {
        let cases: &[(u64, &str)] = &[
            (0, "0s"),
            (1, "1ns"),
            (1_100, "1.1µs"),
            (2_200_000, "2.2ms"),
            (3_300_000_000, "3.3s"),
            (4 * 60 * 1_000_000_000 + 5_000_000_000, "4m5s"),
            (4 * 60 * 1_000_000_000 + 5_001_000_000, "4m5.001s"),
            (
                5 * 3_600_000_000_000 + 6 * 60_000_000_000 + 7_001_000_000,
                "5h6m7.001s",
            ),
            (8 * 60_000_000_000 + 1, "8m0.000000001s"),
            (300_000_000_000, "5m0s"),
            (3_600_000_000_000, "1h0m0s"),
            (500_000_000, "500ms"),
            (90_000_000_000, "1m30s"),
        ];
        for (ns, want) in cases {
            assert_eq!(format_go_duration(Duration::from_nanos(*ns)), *want, "{ns}");
        }
    }

    #[test]
    fn parses_like_go() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("5s", 5_000_000_000),
            ("30s", 30_000_000_000),
            ("1.5s", 1_500_000_000),
            ("500ms", 500_000_000),
            ("1m30s", 90_000_000_000),
            ("1h", 3_600_000_000_000),
            (".5s", 500_000_000),
            ("1.s", 1_000_000_000),
            ("+5s", 5_000_000_000),
            ("-0", 0),
            ("10us", 10_000),
            ("10µs", 10_000),
            ("1h2m3s4ms5us6ns", 3_723_004_005_006),
            ("5m0s", 300_000_000_000),
        ];
        for (s, ns) in cases {
            assert_eq!(parse_go_duration(s), Ok(Duration::from_nanos(*ns)), "{s}");
        }
    }

    #[test]
    fn rejects_what_go_rejects() {
        assert_eq!(parse_go_duration(""), Err(DurationError::Empty));
        assert_eq!(parse_go_duration("5"), Err(DurationError::MissingUnit));
        assert_eq!(parse_go_duration("-5s"), Err(DurationError::Negative));
        assert!(matches!(
            parse_go_duration("5d"),
            Err(DurationError::UnknownUnit(_))
        ));
        assert_eq!(parse_go_duration("."), Err(DurationError::Syntax));
        assert_eq!(parse_go_duration("s"), Err(DurationError::Syntax));
        assert_eq!(
            parse_go_duration("99999999999999999999h"),
            Err(DurationError::Overflow)
        );
        assert_eq!(parse_go_duration("3000000h"), Err(DurationError::Overflow));
    }

    // From Go itself (go1.27.3): fmt.Printf("%q %d %s\n", s, int64(d), d) for
    // d, err := time.ParseDuration(s), "err" when err != nil.
    #[test]
    fn parses_and_formats_like_go_at_the_edges() {
        let ok: &[(&str, u64, &str)] = &[
            ("0.999999999999h", 3_599_999_999_996, "59m59.999999996s"),
            ("0.3333333333333333333h", 1_200_000_000_000, "20m0s"),
            ("1.0000000000000000001s", 1_000_000_000, "1s"),
            ("0.1h", 360_000_000_000, "6m0s"),
            ("0.00000000000001h", 0, "0s"),
            ("1.000000001ms", 1_000_000, "1ms"),
            ("1.5µs", 1_500, "1.5µs"),
            ("1.9ns", 1, "1ns"),
            ("0.7m", 42_000_000_000, "42s"),
            ("1.1h1.1m1.1s", 4_027_100_000_000, "1h7m7.1s"),
            (
                "9223372036854775807ns",
                9_223_372_036_854_775_807,
                "2562047h47m16.854775807s",
            ),
            (
                "2562047h47m16.854775807s",
                9_223_372_036_854_775_807,
                "2562047h47m16.854775807s",
            ),
            ("-0s", 0, "0s"),
            ("+0", 0, "0s"),
            ("-0", 0, "0s"),
            (
                "123456789.123456789123456789s",
                123_456_789_123_456_789,
                "34293h33m9.123456789s",
            ),
            ("0.000000000000000000000000001h", 0, "0s"),
            ("2562047.78h", 9_223_372_008_000_000_000, "2562047h46m48s"),
        ];
        for (s, ns, shown) in ok {
            let d = parse_go_duration(s);
            assert_eq!(d, Ok(Duration::from_nanos(*ns)), "{s}");
            assert_eq!(format_go_duration(Duration::from_nanos(*ns)), *shown, "{s}");
        }
        for s in [
            "9223372036854775808ns",
            "2562047h47m16.854775808s",
            "00",
            "0.5",
            "1h-1m",
            "1..5s",
        ] {
            assert!(parse_go_duration(s).is_err(), "{s}");
        }
        // Go accepts -1.5h; no NodePass setting takes a negative duration.
        assert_eq!(parse_go_duration("-1.5h"), Err(DurationError::Negative));
    }

    #[test]
    fn roundtrip_format_parse() {
        for ns in [
            1u64,
            999,
            1_000,
            123_456_789,
            1_000_000_000,
            86_400_000_000_000,
        ] {
            let d = Duration::from_nanos(ns);
            assert_eq!(parse_go_duration(&format_go_duration(d)), Ok(d));
        }
    }
}
