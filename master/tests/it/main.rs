//! The master's tests: the API, its edge, TLS, metrics, the store on a full disk, the
//! transcript against the reference's captures, and the live comparison with the Go master.
//! One test binary with a module per area; the in-process master they start is
//! [`common::TestMaster`], everything else comes from the test kit (`nodepass-testkit`).

mod api;
mod api_edge;
mod common;
mod disk_full;
mod go_live;
mod info_host;
mod metrics;
mod store_crash;
mod tls;
mod transcript;
