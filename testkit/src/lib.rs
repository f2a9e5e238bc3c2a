//! The one test kit of nodepass: everything the end-to-end tests (`tests/e2e`), the master's
//! tests (`master/tests/it`) and the benches share, so no test starts a process, a master,
//! a tunnel pair or an echo server its own way.
//!
//! - [`proc`]: the built `nodepass` binary and any child process, output kept line by line,
//!   killed on drop; the fast `NP_*` settings tests run with.
//! - [`net`]: free loopback ports (never the same one twice in a process), TCP/UDP echo
//!   servers, echo round trips, a stranger's source address.
//! - [`pair`]: a server+client tunnel pair of ours, or of ours and the Go reference, over any
//!   pool type and TLS mode, waited for until it carries traffic.
//! - [`go`]: the Go NodePass v1.14.0 binary (`NODEPASS_GO_BIN`) and its master.
//! - [`master`] and [`api`]: a master run as its own process, a raw HTTP/1.1 client that sees
//!   the exact bytes, an SSE reader.
//! - [`pki`]: a test CA and a leaf certificate on disk.
//! - [`meter`]: throughput sources and a meter for the rate tests.
//! - [`fault`]: a relay that can silence a link, and users arriving every 100 ms.
//! - [`browser`]: headless Chromium over WebDriver for the console's tests and bench.
//!
//! Everything runs on 127.0.0.0/8 with real sockets and real processes.

pub mod api;
pub mod browser;
pub mod fault;
pub mod go;
pub mod master;
pub mod meter;
pub mod net;
pub mod pair;
pub mod pki;
pub mod proc;

pub use net::{connect_from, echo_once, free_port, pattern, udp_echo, wait_tunnel, wait_udp, Echo};
pub use proc::{bin, dumps, Proc, FAST_ENV};
