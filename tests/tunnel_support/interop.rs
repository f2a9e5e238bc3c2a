//! What the interop tests against the Go reference share: finding its binary (the tests
//! skip, saying why, when `NODEPASS_GO_BIN` is not set to one) and starting either
//! implementation with the same URL.

use super::Proc;

/// The Go NodePass v1.14.0 binary named by `NODEPASS_GO_BIN`, or None (with the reason on
/// stderr) so the calling test skips.
pub fn go_bin() -> Option<String> {
    match std::env::var("NODEPASS_GO_BIN") {
        Ok(p) if std::path::Path::new(&p).is_file() => Some(p),
        Ok(p) => {
            eprintln!("skipped: NODEPASS_GO_BIN={p:?} is not a file");
            None
        }
        Err(_) => {
            eprintln!(
                "skipped: set NODEPASS_GO_BIN to a NodePass v1.14.0 binary to run the interop tests"
            );
            None
        }
    }
}

/// Which implementation plays a role.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Impl {
    Ours,
    Go,
}

/// Starts `url` with implementation `which` (ours in foreground mode, the Go binary `go`).
pub fn start(which: Impl, go: &str, name: &str, url: &str, env: &[(&str, &str)]) -> Proc {
    match which {
        Impl::Ours => Proc::foreground(name, url, env),
        Impl::Go => Proc::start(name, go, &[url], env),
    }
}
