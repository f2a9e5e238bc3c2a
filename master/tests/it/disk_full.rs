//! A full disk: the state directory on a tiny tmpfs. Mutating calls answer 500 with the
//! reason, nothing is lost in memory, and once there is room again the master reopens its
//! database, saves everything, and a restart finds every instance. Needs permission to
//! mount a tmpfs (root with CAP_SYS_ADMIN); skipped with a message otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::TestMaster;

/// A tmpfs mounted on a temporary directory, unmounted on drop.
struct Tmpfs {
    dir: Option<tempfile::TempDir>,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?
            .success();
        ok.then_some(Tmpfs { dir: Some(dir) })
    }
    fn path(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }
    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = Command::new("umount").arg(dir.path()).status();
        }
    }
}

#[test]
fn a_full_disk_answers_500_and_loses_nothing() {
    let Some(fs) = Tmpfs::mount("600k") else {
        eprintln!("skipping: cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)");
        return;
    };
    let state = tempfile::tempdir_in(fs.path()).unwrap();
    let worker = PathBuf::from("/nonexistent/nodepass-worker");
    let tm = TestMaster::start_in("master://127.0.0.1:0/api?log=error", state, worker.clone());
    let alias = "a".repeat(250);
    let mut created = Vec::new();
    let mut refused = None;
    for _ in 0..2000 {
        let r = tm.api.call(
            "POST",
            "/instances",
            Some(&format!(
                r#"{{"alias":"{alias}","url":"client://127.0.0.1:1/127.0.0.1:2?mode=1"}}"#
            )),
        );
        if r.status == 201 {
            created.push(r.json()["id"].as_str().unwrap().to_string());
        } else {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("the tmpfs never filled up");
    assert_eq!(r.status, 500);
    let msg = r.json()["error"].as_str().unwrap().to_string();
    assert!(msg.starts_with("Failed to save state: "), "{msg}");
    assert!(msg.contains("kept in memory"), "{msg}");
    // The failed writes show in the metrics.
    let metrics = tm.api.get("/metrics").text();
    let errors = metrics
        .lines()
        .find_map(|l| l.strip_prefix("nodepass_store_write_errors_total "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(errors >= Some(1.0), "store write errors: {errors:?}");
    // Nothing lost in memory (the refused one is there too).
    let all = tm.api.get("/instances").json();
    assert_eq!(all.as_array().unwrap().len(), created.len() + 2);

    // Room again: the periodic save (every 500 ms here) reopens and rewrites everything.
    fs.resize("16m");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = tm.api.call(
            "PATCH",
            &format!("/instances/{}", created[0]),
            Some(r#"{"alias":"after"}"#),
        );
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "saving never recovered: {}",
            r.text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let count = tm.api.get("/instances").json().as_array().unwrap().len();
    let dir = tm.stop();
    let tm2 = TestMaster::start_in("master://127.0.0.1:0/api?log=error", dir, worker);
    let after = tm2.api.get("/instances").json();
    assert_eq!(
        after.as_array().unwrap().len(),
        count,
        "every instance was saved"
    );
    assert_eq!(tm2.api.instance(&created[0])["alias"], "after");
    drop(tm2);
}
