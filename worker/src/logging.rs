//! Logging: one tracing layer that turns records into output lines, filtered by the URL's
//! `log` level. In foreground mode it prints the reference's human format
//! (`YYYY-MM-DD HH:MM:SS.mmm  LEVEL  message`, local time, coloured level); in report mode
//! each record becomes a `log` report line for the master. Either way the tunnel key is
//! masked in every message (nodepass_proto::redact).
//!
//! The reference has a fifth level above ERROR, EVENT (the CHECK_POINT lines). tracing has
//! no such level, so EVENT records are INFO records with the target [`EVENT_TARGET`]; use
//! the [`np_event!`](crate::np_event) macro.

use std::fmt::Write as _;

use nodepass_proto::redact::mask_tunnel_keys_owned;
use nodepass_proto::report::{Log, Report, ReportLevel};
use nodepass_proto::url::LogLevel;
use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::output;

/// Target of EVENT-level records.
pub const EVENT_TARGET: &str = "nodepass::event";

/// Logs at the reference's EVENT level (shown unless `log=none`).
#[macro_export]
macro_rules! np_event {
    ($($arg:tt)*) => {
        ::tracing::info!(target: "nodepass::event", $($arg)*)
    };
}

/// Installs the output layer as the global subscriber (once; later calls are ignored).
pub fn init(level: LogLevel) {
    let layer = OutputLayer { level };
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

struct OutputLayer {
    level: LogLevel,
}

/// The reference level of a record, or None for records we never show (other crates'
/// chatter below WARN, TRACE).
fn level_of(meta: &Metadata<'_>) -> Option<ReportLevel> {
    if meta.target() == EVENT_TARGET {
        return Some(ReportLevel::Event);
    }
    let ours = meta.target().starts_with("nodepass");
    match *meta.level() {
        Level::ERROR => Some(ReportLevel::Error),
        Level::WARN => Some(ReportLevel::Warn),
        Level::INFO if ours => Some(ReportLevel::Info),
        Level::DEBUG if ours => Some(ReportLevel::Debug),
        _ => None,
    }
}

/// A span of this program (none exist today; kept enabled should one be added).
fn own_span(meta: &Metadata<'_>) -> bool {
    meta.is_span() && meta.target().starts_with("nodepass")
}

impl OutputLayer {
    fn wants(&self, meta: &Metadata<'_>) -> bool {
        level_of(meta).is_some_and(|l| l.enabled_at(self.level))
    }
}

impl<S: Subscriber> Layer<S> for OutputLayer {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        // Decided once per call site: a disabled debug! in the relay costs one branch. Spans
        // are never shown: other crates' (quinn's per-packet spans, h2's) would cost a
        // registry slot each for nothing.
        if own_span(meta) || self.wants(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>, _ctx: Context<'_, S>) -> bool {
        own_span(meta) || self.wants(meta)
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let Some(level) = level_of(event.metadata()) else {
            return;
        };
        if !level.enabled_at(self.level) {
            return;
        }
        let mut message = String::new();
        event.record(&mut MessageVisitor(&mut message));
        // Tunnel URLs in messages carry the key: never let it reach a log.
        let message = mask_tunnel_keys_owned(message);
        if output::report_mode() {
            let ts_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            output::log_line(
                Report::Log(Log {
                    level,
                    message,
                    ts_ms,
                })
                .to_line(),
            );
        } else {
            output::log_line(human_line(level, &message));
        }
    }
}

struct MessageVisitor<'a>(&'a mut String);

impl Visit for MessageVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={}", field.name(), value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={:?}", field.name(), value);
        }
    }
}

/// The reference's line: `2026-01-02 15:04:05.000  \x1b[32mINFO\x1b[0m  message`.
pub fn human_line(level: ReportLevel, message: &str) -> String {
    let colour = match level {
        ReportLevel::Debug => "\x1b[34m",
        ReportLevel::Info => "\x1b[32m",
        ReportLevel::Warn => "\x1b[33m",
        ReportLevel::Error => "\x1b[31m",
        ReportLevel::Event => "\x1b[36m",
    };
    format!(
        "{}  {colour}{}\x1b[0m  {message}",
        local_timestamp(),
        level.upper()
    )
}

/// Local wall-clock time as `YYYY-MM-DD HH:MM:SS.mmm`.
fn local_timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as libc::time_t;
    let millis = now.subsec_millis();
    // SAFETY: localtime_r only writes into the `tm` we pass and reads `secs`; both live on
    // this stack frame. A zeroed `tm` is a valid value of that plain C struct.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    if !ok {
        return format!("@{}.{millis:03}", now.as_secs());
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{millis:03}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_line_has_the_reference_shape() {
        let line = human_line(ReportLevel::Info, "Server started");
        // 23 chars of timestamp, two spaces, coloured level, two spaces, message.
        assert_eq!(line.as_bytes()[4], b'-');
        assert_eq!(&line[23..25], "  ");
        assert!(
            line.ends_with("  \x1b[32mINFO\x1b[0m  Server started"),
            "{line}"
        );
    }
}
