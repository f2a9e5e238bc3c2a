//! The Go reference (NodePass v1.14.0): finding its binary (tests skip, saying why, when
//! `NODEPASS_GO_BIN` does not name one), starting either implementation with the same URL,
//! and the Go master run from a copy of the binary.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::proc::stop_child;
use crate::Proc;

/// The Go NodePass v1.14.0 binary named by `NODEPASS_GO_BIN`, or None (with the reason on
/// stderr) so the calling test skips.
pub fn go_bin() -> Option<String> {
    go_bin_or("the interop tests")
}

/// [`go_bin`], naming `who` needs it in the skip message.
pub fn go_bin_or(who: &str) -> Option<String> {
    match std::env::var("NODEPASS_GO_BIN") {
        Ok(p) if std::path::Path::new(&p).is_file() => Some(p),
        Ok(p) => {
            eprintln!("skipped: NODEPASS_GO_BIN={p:?} is not a file");
            None
        }
        Err(_) => {
            eprintln!(
                "skipped: set NODEPASS_GO_BIN to a NodePass v1.14.0 binary to run {who} \
                 (.ci/run builds one from ../shared/tools/go-nodepass)"
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

/// The Go reference master (NodePass v1.14.0), run from a copy of its binary in a temporary
/// directory (it keeps its state, `gob/nodepass.gob`, beside its executable).
pub struct GoMaster {
    pub child: Child,
    /// Where the copy runs; its state file is `dir/gob/nodepass.gob`.
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub key: String,
}

impl Drop for GoMaster {
    fn drop(&mut self) {
        // SIGTERM first: the Go master stops its own instance processes then (it does not
        // tie them to its life), SIGKILL only if it hangs.
        stop_child(&mut self.child, Duration::from_secs(10));
    }
}

impl GoMaster {
    /// Starts the Go binary `bin` as a master on a free loopback port; returns once it
    /// printed its API key and listens.
    pub fn start(bin: &Path) -> GoMaster {
        let dir = tempfile::tempdir().expect("temp dir");
        let exe = dir.path().join("nodepass");
        std::fs::copy(bin, &exe).expect("copy the Go binary");
        let port = crate::free_port();
        // A test thread that forks while the copy's write descriptor is still open hands
        // it to its child until that child's exec: ETXTBSY for a moment. Retry briefly.
        let mut tries = 0;
        let mut child = loop {
            match Command::new(&exe)
                .arg(format!("master://127.0.0.1:{port}/api?log=info"))
                .current_dir(dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
            {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other.expect("start the Go master"),
            }
        };
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(i) = line.find("API Key created: ") {
                    let _ = tx.send(line[i + 17..].chars().take(32).collect::<String>());
                }
            }
        });
        let key = rx
            .recv_timeout(Duration::from_secs(15))
            .expect("the Go master printed no API key");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "the Go master does not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        GoMaster {
            child,
            dir,
            addr,
            key,
        }
    }
}
