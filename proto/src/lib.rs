//! nodepass-proto: the pure half of NodePass. No I/O, no async: the URL grammar and
//! canonical config ([`url`]) and the reference master's early URL refusals ([`go_url`]), Go durations ([`duration`]), the tunnel wire codec
//! ([`wire`]), the worker -> master report lines ([`report`]), the NP_* tunables
//! ([`tunables`]) and the masking of tunnel keys in log text ([`redact`]). The worker and
//! master only move bytes; every decision about what the bytes mean lives here and is
//! tested without a socket.

pub mod duration;
pub mod go_url;
pub mod redact;
pub mod report;
pub mod tunables;
pub mod url;
pub mod wire;

/// The NodePass version whose wire protocol and API this implementation speaks.
pub const REFERENCE_VERSION: &str = "v1.14.0";
