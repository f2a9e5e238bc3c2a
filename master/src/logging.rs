//! The master's own log output, in the reference's layout
//! (`YYYY-MM-DD HH:MM:SS.mmm  LEVEL  message`) on stdout, filtered by the master URL's `log`
//! parameter, with colour codes only when stdout is a terminal (journald and files get plain
//! text). Worker log records are printed as `<line> [<instance id>]`, like the reference.
//! Tunnel keys are masked in every line (`server://****@...`); the API keeps them.

use std::fmt;
use std::io::{IsTerminal, Write};
use std::time::SystemTime;

use nodepass_proto::redact::mask_tunnel_keys;
use nodepass_proto::report::ReportLevel;
use nodepass_proto::url::LogLevel;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::gojson::log_line;

/// Whether the master's output should carry colour codes.
pub fn colour_wanted() -> bool {
    std::io::stdout().is_terminal()
}

struct ReferenceFormat {
    colour: bool,
}

impl<S, N> FormatEvent<S, N> for ReferenceFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = match *event.metadata().level() {
            Level::TRACE | Level::DEBUG => ReportLevel::Debug,
            Level::INFO => ReportLevel::Info,
            Level::WARN => ReportLevel::Warn,
            Level::ERROR => ReportLevel::Error,
        };
        // log_line renders the prefix; the message follows it.
        let prefix = log_line(SystemTime::now(), level, "", self.colour);
        // Rendered aside first so the tunnel key in a URL can be masked before it is written.
        let mut message = String::new();
        ctx.field_format()
            .format_fields(Writer::new(&mut message), event)?;
        writeln!(writer, "{prefix}{}", mask_tunnel_keys(&message))
    }
}

/// Installs the master's log output (once per process; later calls are ignored).
pub fn init(level: LogLevel, colour: bool) {
    let ours = match level {
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Error | LogLevel::Event => LevelFilter::ERROR,
        LogLevel::None => LevelFilter::OFF,
    };
    // Libraries (sled, hyper) only get to say warnings and errors.
    let others = ours.min(LevelFilter::WARN);
    let filter = Targets::new()
        .with_target("nodepass_master", ours)
        .with_default(others);
    let layer = tracing_subscriber::fmt::layer()
        .event_format(ReferenceFormat { colour })
        .with_writer(std::io::stdout);
    let _ = tracing_subscriber::registry()
        .with(layer)
        .with(filter)
        .try_init();
}

/// Prints one worker log line with its instance id appended (tunnel keys masked: a line
/// that did not come through a worker's report, e.g. a crash message, may quote a URL).
pub fn print_instance_line(line: String, id: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{} [{id}]", mask_tunnel_keys(&line));
}
