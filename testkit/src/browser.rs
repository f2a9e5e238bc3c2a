//! Headless Chromium driven over WebDriver (Debian's chromium and chromedriver), shared by
//! the console tests (tests/e2e/console_browser.rs) and benches/console: a session per call, on loopback only.

use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use serde_json::{json, Value};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on a free loopback port, killed on drop.
pub struct Driver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    /// Kills chromedriver's whole process group: the Chromium it started too, even when the
    /// test failed before closing its session.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn browser_present() -> bool {
    for tool in [CHROMIUM, CHROMEDRIVER] {
        if !Path::new(tool).exists() {
            eprintln!(
                "SKIP: {tool} is not installed (apt-get install chromium chromium-driver); \
                 the console's browser tests need it"
            );
            return false;
        }
    }
    true
}

/// Starts chromedriver and a headless Chromium session of `width` x `height`.
pub async fn browser(width: u32, height: u32) -> (Driver, Client) {
    let port = crate::free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let profile = tempfile::tempdir().expect("profile dir");
    let driver = Driver {
        child,
        port,
        _profile: profile,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", driver.port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                format!("--user-data-dir={}", driver._profile.path().display()),
                format!("--window-size={width},{height}"),
            ]
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a Chromium session through chromedriver");
    (driver, client)
}

/// Evaluates `expr` (a JavaScript expression) in the page.
pub async fn js(c: &Client, expr: &str) -> Value {
    c.execute(&format!("return ({expr});"), vec![])
        .await
        .unwrap_or_else(|e| panic!("script {expr:?} failed: {e}"))
}

/// Waits until `expr` is true in the page; on timeout fails with the page's text.
pub async fn wait_true(c: &Client, what: &str, secs: u64, expr: &str) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if js(c, expr).await == Value::Bool(true) {
            return;
        }
        if Instant::now() > deadline {
            let body = js(c, "document.body.innerText").await;
            panic!("timed out waiting for {what} ({expr}); the page says:\n{body}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
