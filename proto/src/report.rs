//! The worker -> master protocol: one JSON object per stdout line, tagged by `kind`
//! (`ready`, `stats`, `log`, `exit`) and carrying a version `v`.
//!
//! Decoding is tolerant on purpose: an unknown kind or field is ignored (an old master
//! survives a new worker) and a line that is not JSON at all is kept as a plain log line
//! (a panic message or a stray print never crashes the master or gets lost).

use serde::{Deserialize, Serialize};

use crate::url::LogLevel;

/// Version of the report protocol written by this build.
pub const REPORT_VERSION: u32 = 1;

/// A worker is listening and serving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Ready {
    /// Resolved mode: 1 or 2 (see `mode` in the URL reference).
    pub mode: u8,
    /// `server` or `client`.
    pub role: String,
    /// Addresses it listens on, for the log.
    pub listen: Vec<String>,
}

/// Periodic figures, cumulative byte counters for the life of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Stats {
    pub mode: u8,
    /// Control-channel round trip in ms (single-end: target connect time).
    pub ping: u64,
    /// Idle pool entries.
    pub pool: u64,
    /// Current TCP connections.
    pub tcps: u64,
    /// Current UDP sessions.
    pub udps: u64,
    pub tcprx: u64,
    pub tcptx: u64,
    pub udprx: u64,
    pub udptx: u64,
}

/// One log record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Log {
    pub level: ReportLevel,
    pub message: String,
    /// Milliseconds since the Unix epoch when the record was made (0 if unknown).
    #[serde(default)]
    pub ts_ms: u64,
}

/// Log levels as they appear in reports (the URL's levels minus `none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportLevel {
    Debug,
    Info,
    Warn,
    Error,
    Event,
}

impl ReportLevel {
    /// The reference's upper-case level word (`INFO`, `EVENT`, ...).
    pub fn upper(self) -> &'static str {
        match self {
            ReportLevel::Debug => "DEBUG",
            ReportLevel::Info => "INFO",
            ReportLevel::Warn => "WARN",
            ReportLevel::Error => "ERROR",
            ReportLevel::Event => "EVENT",
        }
    }

    /// Whether a record at this level is shown under the URL's `log` setting.
    pub fn enabled_at(self, setting: LogLevel) -> bool {
        let rank = |l: LogLevel| match l {
            LogLevel::Debug => 0,
            LogLevel::Info => 1,
            LogLevel::Warn => 2,
            LogLevel::Error => 3,
            LogLevel::Event => 4,
            LogLevel::None => 5,
        };
        let own = match self {
            ReportLevel::Debug => 0,
            ReportLevel::Info => 1,
            ReportLevel::Warn => 2,
            ReportLevel::Error => 3,
            ReportLevel::Event => 4,
        };
        own >= rank(setting)
    }
}

/// The worker is about to exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Exit {
    /// Why, in words (`shutdown`, or the fatal error).
    pub reason: String,
    /// Whether the exit is an error (the master sets the instance to `error`).
    pub error: bool,
}

/// One report line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Ready(Ready),
    Stats(Stats),
    Log(Log),
    Exit(Exit),
}

/// What the master makes of one stdout line of a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportLine {
    Report(Report),
    /// JSON with a kind this master does not know: ignore.
    Unknown(String),
    /// Not a report at all (not JSON, or JSON without a kind): keep as a plain log line.
    Plain(String),
}

impl Report {
    fn kind(&self) -> &'static str {
        match self {
            Report::Ready(_) => "ready",
            Report::Stats(_) => "stats",
            Report::Log(_) => "log",
            Report::Exit(_) => "exit",
        }
    }

    /// The line to write (without the trailing `\n`).
    pub fn to_line(&self) -> String {
        let body = match self {
            Report::Ready(r) => serde_json::to_value(r),
            Report::Stats(s) => serde_json::to_value(s),
            Report::Log(l) => serde_json::to_value(l),
            Report::Exit(e) => serde_json::to_value(e),
        };
        let mut obj = serde_json::Map::new();
        obj.insert("v".into(), REPORT_VERSION.into());
        obj.insert("kind".into(), self.kind().into());
        if let Ok(serde_json::Value::Object(fields)) = body {
            obj.extend(fields);
        }
        serde_json::Value::Object(obj).to_string()
    }
}

/// Decodes one line from a worker's stdout. Never fails.
pub fn decode_line(line: &str) -> ReportLine {
    let trimmed = line.trim_end_matches(['\r', '\n']);
    let plain = || ReportLine::Plain(trimmed.to_string());
    let Ok(serde_json::Value::Object(obj)) = serde_json::from_str::<serde_json::Value>(trimmed)
    else {
        return plain();
    };
    let Some(kind) = obj.get("kind").and_then(|k| k.as_str()).map(str::to_string) else {
        return plain();
    };
    let value = serde_json::Value::Object(obj);
    let report = match kind.as_str() {
        "ready" => serde_json::from_value(value).map(Report::Ready),
        "stats" => serde_json::from_value(value).map(Report::Stats),
        "log" => serde_json::from_value(value).map(Report::Log),
        "exit" => serde_json::from_value(value).map(Report::Exit),
        _ => return ReportLine::Unknown(kind),
    };
    match report {
        Ok(r) => ReportLine::Report(r),
        // A known kind with unusable fields: keep the text rather than lose it.
        Err(_) => plain(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_every_kind() {
        let reports = [
            Report::Ready(Ready {
                mode: 1,
                role: "client".into(),
                listen: vec!["127.0.0.1:9000".into()],
            }),
            Report::Stats(Stats {
                mode: 2,
                ping: 3,
                pool: 64,
                tcps: 1,
                udps: 2,
                tcprx: u64::MAX,
                tcptx: 5,
                udprx: 6,
                udptx: 7,
            }),
            Report::Log(Log {
                level: ReportLevel::Event,
                message: "line with \"quotes\"\nand newline".into(),
                ts_ms: 1_700_000_000_000,
            }),
            Report::Exit(Exit {
                reason: "shutdown".into(),
                error: false,
            }),
        ];
        for r in reports {
            let line = r.to_line();
            assert!(!line.contains('\n'));
            assert_eq!(decode_line(&line), ReportLine::Report(r));
        }
    }

    #[test]
    fn wire_form_is_stable() {
        let line = Report::Stats(Stats {
            mode: 1,
            ..Stats::default()
        })
        .to_line();
        assert_eq!(
            line,
            r#"{"v":1,"kind":"stats","mode":1,"ping":0,"pool":0,"tcps":0,"udps":0,"tcprx":0,"tcptx":0,"udprx":0,"udptx":0}"#
        );
    }

    #[test]
    fn tolerant_decoding() {
        // Unknown fields and a newer version are fine.
        assert_eq!(
            decode_line(r#"{"v":9,"kind":"exit","reason":"x","error":true,"new":[1]}"#),
            ReportLine::Report(Report::Exit(Exit {
                reason: "x".into(),
                error: true
            }))
        );
        assert_eq!(
            decode_line(r#"{"v":2,"kind":"telemetry"}"#),
            ReportLine::Unknown("telemetry".into())
        );
        assert_eq!(
            decode_line("thread 'main' panicked at src/x.rs\n"),
            ReportLine::Plain("thread 'main' panicked at src/x.rs".into())
        );
        assert_eq!(decode_line("[1,2]"), ReportLine::Plain("[1,2]".into()));
        assert_eq!(
            decode_line(r#"{"kind":"log","level":"loud","message":"m"}"#),
            ReportLine::Plain(r#"{"kind":"log","level":"loud","message":"m"}"#.into())
        );
        assert_eq!(decode_line(""), ReportLine::Plain(String::new()));
    }

    #[test]
    fn level_filter() {
        assert!(ReportLevel::Event.enabled_at(LogLevel::Error));
        assert!(!ReportLevel::Debug.enabled_at(LogLevel::Info));
        assert!(ReportLevel::Info.enabled_at(LogLevel::Info));
        assert!(!ReportLevel::Event.enabled_at(LogLevel::None));
    }
}
