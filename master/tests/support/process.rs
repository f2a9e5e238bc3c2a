//! Processes for the tests and the benchmark that run real binaries: a `nodepass master`
//! process with its output collected, the Go reference master, stopping a child politely,
//! and a loopback echo server to send traffic to.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Api;

/// SIGTERM, up to `grace` for the process to end, then SIGKILL; reaps it either way.
pub fn stop_child(child: &mut Child, grace: Duration) {
    if child.try_wait().ok().flatten().is_none() {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A `nodepass master://127.0.0.1:<port>/api?log=info` process. Every line it prints
/// (stdout and stderr) is kept in `lines`. Stopped with [`stop_child`] on drop.
pub struct MasterProc {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
    pub api: Api,
}

impl MasterProc {
    /// Starts `exe` as a master with its state in `state` and the extra environment
    /// `env`; returns once it printed its API key and listens.
    pub fn spawn(exe: &Path, state: &Path, port: u16, env: &[(&str, &str)]) -> MasterProc {
        // The master refuses a state directory other users can enter, and temp dirs come
        // out 0755 here: the test's directory is its own, so make it private.
        if state.is_dir() {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(state, std::fs::Permissions::from_mode(0o700))
                .expect("make the state directory private");
        }
        let mut child = Command::new(exe)
            .arg(format!("master://127.0.0.1:{port}/api?log=info"))
            .env("NP_STATE_DIR", state)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the master binary");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut mp = MasterProc {
            child,
            lines,
            api: Api {
                addr,
                base: "/api/v1".into(),
                key: String::new(),
            },
        };
        let line = mp.wait_line(30, |l| l.contains("Master started: "));
        assert!(line.contains(&format!("127.0.0.1:{port}/api/v1")), "{line}");
        let key_line = mp.wait_line(5, |l| {
            l.contains("API Key created: ") || l.contains("API Key loaded: ")
        });
        mp.api.key = key_line.rsplit(' ').next().unwrap().to_string();
        assert_eq!(mp.api.key.len(), 32, "{key_line}");
        mp
    }

    /// The first line matching `pred`, waiting up to `secs` for it.
    pub fn wait_line(&self, secs: u64, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| pred(l)) {
                return l.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "master never printed the expected line; output:\n{}",
                    self.lines.lock().unwrap().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Pids of the workers started for `id`, from the master's log, in order.
    pub fn worker_pids(&self, id: &str) -> Vec<i32> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("Instance starting: ") && l.contains(&format!("[{id}]")))
            .filter_map(|l| l.rsplit("(pid ").next()?.trim_end_matches(')').parse().ok())
            .collect()
    }

    /// The pid of the `n`th worker started for `id` (1-based), waiting for it.
    pub fn wait_worker_pid(&self, id: &str, n: usize) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let pids = self.worker_pids(id);
            if pids.len() >= n {
                return pids[n - 1];
            }
            assert!(
                Instant::now() < deadline,
                "worker #{n} of {id} never started"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM; waits for the exit and returns its status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "master ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for MasterProc {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(20));
    }
}

/// A loopback TCP echo server.
pub fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut c in l.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
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
        let port = super::free_port();
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
