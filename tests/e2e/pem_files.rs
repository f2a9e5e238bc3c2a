//! A tls=2 worker whose `crt` is not a small regular file (a FIFO, /dev/zero, a 2 MiB file)
//! refuses to start with an error naming the file, instead of blocking on the FIFO or
//! reading /dev/zero until memory runs out.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs a tls=2 server with `crt`; returns its exit status and stderr, or panics if it is
/// still running at a generous deadline.
fn run_server(crt: &str, key: &str) -> (std::process::ExitStatus, String) {
    let port = nodepass_testkit::free_port();
    let url = format!("server://127.0.0.1:{port}/127.0.0.1:1?tls=2&crt={crt}&key={key}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_nodepass"))
        .arg(&url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the nodepass binary runs");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("output");
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            return (status, text);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the worker with crt={crt} is still running");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_fifo_dev_zero_or_huge_crt_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("crt.fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo")
        .success());
    let big = dir.path().join("big.crt");
    std::fs::write(&big, vec![b'-'; 2 * 1024 * 1024]).expect("write");
    let key = dir.path().join("k.pem");
    std::fs::write(
        &key,
        rcgen::KeyPair::generate().expect("key").serialize_pem(),
    )
    .expect("write");
    let key = key.display().to_string();
    for (crt, why) in [
        (fifo.display().to_string(), "is not a regular file"),
        ("/dev/zero".to_string(), "is not a regular file"),
        (big.display().to_string(), "more than the 1048576 bytes"),
    ] {
        let (status, text) = run_server(&crt, &key);
        assert!(!status.success(), "{crt}: {text}");
        assert!(text.contains(why), "{crt}: {text}");
        assert!(text.contains(&crt), "{crt}: {text}");
    }
}
