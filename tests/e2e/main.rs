//! The end-to-end tests: the built `nodepass` binary run as real processes on 127.0.0.1,
//! one test binary (one link) with a module per area. Everything they share (processes,
//! tunnel pairs, masters, HTTP/SSE, echo servers, PKI, the Go reference) is the test kit,
//! the dev-only crate `nodepass-testkit` (testkit/).

mod architecture;
mod cli;
mod console_browser;
mod crash_writes;
mod go_import;
mod interop;
mod master_e2e;
mod metrics_e2e;
mod packaging;
mod pem_files;
mod secrets;
mod store_restore_kill;
mod transport_h2;
mod transport_quic;
mod transport_ws;
mod tunnel_dns;
mod tunnel_e2e;
mod tunnel_edge;
mod tunnel_edge_fair;
mod tunnel_faults;
mod tunnel_heal;
mod tunnel_policies;
mod tunnel_policy_block;
mod tunnel_policy_rate;
mod tunnel_policy_slot;
mod tunnel_policy_targets;
mod tunnel_refill;
mod tunnel_wire;
