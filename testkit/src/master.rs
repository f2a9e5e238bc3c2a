//! A `nodepass master://127.0.0.1:<port>/api?log=info` process: its state in a directory of
//! the test's, every line it prints kept, its API key read from its log, its workers' pids
//! read from its log; stopped (SIGTERM, then SIGKILL) on drop.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::api::Api;
use crate::proc::{collect_output, signal, stop_child};

/// Short report and shutdown times for masters under test (see [`MasterProc::launch_fast`]).
pub const MASTER_FAST_ENV: &[(&str, &str)] = &[
    ("NP_REPORT_INTERVAL", "500ms"),
    ("NP_SHUTDOWN_TIMEOUT", "2s"),
];

pub struct MasterProc {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
    pub addr: SocketAddr,
    /// The API at `/api/v1` with the key the master printed (empty until
    /// [`MasterProc::wait_ready`]).
    pub api: Api,
}

impl MasterProc {
    /// Starts `exe` as a master on 127.0.0.1:`port` with its state in `state` (as it is: a
    /// test of the master's own checks may hand it a bad one) and the extra environment
    /// `env`; returns at once (a crash test may kill it while it starts).
    pub fn launch(exe: &Path, state: &Path, port: u16, env: &[(&str, &str)]) -> MasterProc {
        let mut child = Command::new(exe)
            .arg(format!("master://127.0.0.1:{port}/api?log=info"))
            .env("NP_STATE_DIR", state)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the master {exe:?}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        collect_output(&mut child, &lines);
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        MasterProc {
            child,
            lines,
            addr,
            api: Api {
                addr,
                base: "/api/v1".into(),
                key: String::new(),
            },
        }
    }

    /// [`MasterProc::launch`] of the built binary with [`MASTER_FAST_ENV`] (then `env`).
    pub fn launch_fast(state: &Path, port: u16, env: &[(&str, &str)]) -> MasterProc {
        let all: Vec<(&str, &str)> = MASTER_FAST_ENV.iter().chain(env).copied().collect();
        MasterProc::launch(&crate::bin(), state, port, &all)
    }

    /// [`MasterProc::launch`] with `state` made private first (the master refuses a state
    /// directory other users can enter, and temp dirs come out 0755 here), then
    /// [`MasterProc::wait_ready`].
    pub fn spawn(exe: &Path, state: &Path, port: u16, env: &[(&str, &str)]) -> MasterProc {
        // The master refuses a state directory other users can enter, and temp dirs come
        // out 0755 here: the test's directory is its own, so make it private.
        if state.is_dir() {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(state, std::fs::Permissions::from_mode(0o700))
                .expect("make the state directory private");
        }
        let mut mp = MasterProc::launch(exe, state, port, env);
        mp.wait_ready();
        mp
    }

    /// Waits until the API listens and the key is printed; keeps the key in `api` and
    /// returns it.
    pub fn wait_ready(&mut self) -> String {
        let port = self.addr.port();
        let line = self.wait_line(30, |l| l.contains("Master started: "));
        assert!(line.contains(&format!("127.0.0.1:{port}/api/v1")), "{line}");
        let key_line = self.wait_line(5, |l| {
            l.contains("API Key created: ") || l.contains("API Key loaded: ")
        });
        let key = key_line.rsplit(' ').next().unwrap_or_default().to_string();
        assert_eq!(key.len(), 32, "{key_line}");
        self.api.key = key.clone();
        key
    }

    /// The first line matching `pred`, waiting up to `secs` for it (panics with the output).
    pub fn wait_line(&self, secs: u64, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(l) = self.lock().iter().find(|l| pred(l)) {
                return l.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "the master never printed the expected line; output:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Everything printed so far.
    pub fn output(&self) -> String {
        self.lock().join("\n")
    }

    /// Pids of the workers started for `id`, from the master's log, in order.
    pub fn worker_pids(&self, id: &str) -> Vec<i32> {
        self.lock()
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

    /// SIGTERM; waits (up to 20 s) for the exit and returns its status. A master that
    /// ignores it is killed and the test fails.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        signal(&self.child, "-TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            if Instant::now() > deadline {
                self.kill9();
                panic!("the master ignored SIGTERM for 20 s\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for MasterProc {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(20));
    }
}

/// A temporary directory with a private (0700) `state` directory in it, as a master
/// wants its state directory: (the directory, kept alive by the caller; the state path).
pub fn private_state_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    use std::os::unix::fs::DirBuilderExt as _;
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("state");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&root)
        .expect("create the state directory");
    (dir, root)
}
