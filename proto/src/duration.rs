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

/// Parses a Go duration string. Negative values are refused (no NodePass setting takes one).
pub fn parse_go_duration(s: &str) -> Result<Duration, DurationError> {
    let mut rest = s;
    if rest.is_empty() {
        return Err(DurationError::Empty);
    }
    if let Some(r) = rest.strip_prefix('+') {
        rest = r;
    } else if let Some(r) = rest.strip_prefix('-') {
        // "-0" is zero in Go; any other negative is refused.
        if r.chars().all(|c| c == '0') && !r.is_empty() {
            return Ok(Duration::ZERO);
        }
        return Err(DurationError::Negative);
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(DurationError::Syntax);
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        // integer part
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_str, r) = rest.split_at(int_len);
        rest = r;
        let mut frac_str = "";
        if let Some(r) = rest.strip_prefix('.') {
            let frac_len = r.bytes().take_while(u8::is_ascii_digit).count();
            frac_str = &r[..frac_len];
            rest = &r[frac_len..];
        }
        if int_str.is_empty() && frac_str.is_empty() {
            return Err(DurationError::Syntax);
        }
        let unit_len = rest
            .bytes()
            .take_while(|b| !b.is_ascii_digit() && *b != b'.')
            .count();
        let (unit, r) = rest.split_at(unit_len);
        rest = r;
        let scale: u128 = match unit {
            "" => return Err(DurationError::MissingUnit),
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            other => return Err(DurationError::UnknownUnit(other.to_string())),
        };
        let int: u128 = if int_str.is_empty() {
            0
        } else {
            int_str.parse().map_err(|_| DurationError::Overflow)?
        };
        let mut value = int.checked_mul(scale).ok_or(DurationError::Overflow)?;
        // Fraction: Go keeps as many digits as fit and truncates the rest.
        let mut frac_scale = scale;
        for d in frac_str.bytes().take(30) {
            frac_scale /= 10;
            if frac_scale == 0 {
                break;
            }
            value += u128::from(d - b'0') * frac_scale;
        }
        total = total.checked_add(value).ok_or(DurationError::Overflow)?;
        if total > i64::MAX as u128 {
            return Err(DurationError::Overflow);
        }
    }
    Ok(Duration::from_nanos(total as u64))
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
