//! A real `nodepass master://...` process for the end-to-end tests of the store and the
//! secrets: started with its own NP_STATE_DIR, its output collected line by line, killed
//! with SIGKILL on drop. Requests go through [`try_call`], which reports a dead master as
//! `None` instead of panicking (the crash tests kill the master under running requests).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct MasterProc {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
    pub addr: SocketAddr,
}

/// Starts a master on 127.0.0.1:`port` with state in `state`; returns at once.
pub fn spawn(state: &Path, port: u16, env: &[(&str, &str)]) -> MasterProc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nodepass"));
    cmd.arg(format!("master://127.0.0.1:{port}/api?log=info"))
        .env("NP_STATE_DIR", state)
        .env("NP_REPORT_INTERVAL", "500ms")
        .env("NP_SHUTDOWN_TIMEOUT", "2s")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start the master binary");
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
    MasterProc {
        child,
        lines,
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
    }
}

impl MasterProc {
    /// The first output line matching `pred`, waiting up to `secs`.
    pub fn wait_line(&self, secs: u64, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| pred(l)) {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "master never printed the expected line; output:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until the API listens; returns the API key from the log.
    pub fn wait_ready(&self) -> String {
        self.wait_line(30, |l| l.contains("Master started: "));
        let line = self.wait_line(5, |l| {
            l.contains("API Key created: ") || l.contains("API Key loaded: ")
        });
        line.rsplit(' ').next().unwrap_or_default().to_string()
    }

    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits (bounded) for the exit.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
    }
}

impl Drop for MasterProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One API request; `None` when the master is not there or died before answering.
pub fn try_call(
    addr: SocketAddr,
    key: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} /api/v1{path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         X-API-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text.split_once("\r\n\r\n")?;
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())
            .flatten()
    });
    // A response cut short by the kill is no answer.
    match length {
        Some(n) if rest.len() < n => None,
        _ => Some((status, rest.to_string())),
    }
}

/// A free TCP port on 127.0.0.1 (bound then released), never the same one twice in one
/// test process: the kernel may hand a released port out again, so two calls in a row
/// could otherwise name one port for an instance and its target.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind port 0")
            .local_addr()
            .expect("local addr")
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}
