//! Child processes for tests: the built `nodepass` binary (or any other program) with every
//! line it prints kept, killed and reaped on drop, and the fast `NP_*` settings that let a
//! test see several report ticks and restarts within seconds.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The built `nodepass` binary under test: `NODEPASS_BIN` when set, else the `nodepass` in
/// the target directory of the running test or bench (`target/<profile>/deps/<test>` ->
/// `target/<profile>/nodepass`), which cargo builds before the root package's tests run.
pub fn bin() -> PathBuf {
    bin_if_built().unwrap_or_else(|| {
        panic!(
            "the nodepass binary is not built next to this test: run `cargo build` (or set \
             NODEPASS_BIN to a nodepass binary)"
        )
    })
}

/// [`bin`], or None when it has not been built (tests of one crate alone may skip then).
pub fn bin_if_built() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NODEPASS_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    // Tests run from target/<profile>/deps, benches from the same place.
    let p = if dir.ends_with("deps") {
        dir.parent()?.join("nodepass")
    } else {
        dir.join("nodepass")
    };
    p.is_file().then_some(p)
}

/// SIGTERM, up to `grace` for the process to end, then SIGKILL; reaps it either way.
pub fn stop_child(child: &mut Child, grace: Duration) {
    if child.try_wait().ok().flatten().is_none() {
        signal(child, "-TERM");
        let deadline = Instant::now() + grace;
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends a signal (`-TERM`, `-STOP`, ...) to a child with kill(1).
pub fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status();
}

/// Keeps every line `child` prints on stdout and stderr (read by two threads) in `lines`.
pub fn collect_output(child: &mut Child, lines: &Arc<Mutex<Vec<String>>>) {
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
    }
}

/// Short intervals so a test sees several ticks and restarts within seconds.
pub const FAST_ENV: &[(&str, &str)] = &[
    ("NP_REPORT_INTERVAL", "500ms"),
    ("NP_SERVICE_COOLDOWN", "200ms"),
    ("NP_MIN_POOL_INTERVAL", "50ms"),
    ("NP_MAX_POOL_INTERVAL", "300ms"),
    ("NP_SHUTDOWN_TIMEOUT", "2s"),
    ("NP_UDP_READ_TIMEOUT", "2s"),
];

/// A running child process; killed (and reaped) when dropped.
pub struct Proc {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    name: String,
}

impl Proc {
    /// Starts `nodepass <args>` with the fast NP_* settings plus `env`.
    pub fn start(
        name: &str,
        program: impl AsRef<std::ffi::OsStr>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Proc {
        let program = program.as_ref();
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in FAST_ENV.iter().chain(env.iter()) {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program:?}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        collect_output(&mut child, &lines);
        Proc {
            child,
            lines,
            name: name.to_string(),
        }
    }

    /// `nodepass worker <url>`: JSON report lines.
    pub fn worker(name: &str, url: &str, env: &[(&str, &str)]) -> Proc {
        Proc::start(name, bin(), &["worker", url], env)
    }

    /// `nodepass <url>`: foreground with human logs.
    pub fn foreground(name: &str, url: &str, env: &[(&str, &str)]) -> Proc {
        Proc::start(name, bin(), &[url], env)
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Everything printed so far, for failure messages.
    pub fn dump(&self) -> String {
        format!("--- {} ---\n{}", self.name, self.lines().join("\n"))
    }

    /// Waits until a printed line satisfies `pred`; panics with the output otherwise.
    pub fn wait_line(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| pred(l)) {
                return l;
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: no line with {what} within {timeout:?}\n{}",
                    self.name,
                    self.dump()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Number of printed lines containing `s`.
    pub fn count(&self, s: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(s)).count()
    }

    /// Sends SIGTERM and waits for the exit (at most `timeout`); returns the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        signal(&self.child, "-TERM");
        self.wait_exit(timeout)
    }

    /// Waits for the process to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the reader threads catch the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Everything `procs` printed, one after the other, for failure messages.
pub fn dumps(procs: &[&Proc]) -> String {
    procs
        .iter()
        .map(|p| p.dump())
        .collect::<Vec<_>>()
        .join("\n")
}
