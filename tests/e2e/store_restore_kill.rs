//! A restore from backup.json with a real master process killed (SIGKILL) at several points
//! of it: just after start, once sled has created the new database, a little later while
//! records are going in, right after the restore finished, and once the API listens. After
//! each kill the next start must come back with the backup's API key and every instance,
//! and backup.json must still hold the whole state: an interrupted restore must never pass
//! for an empty state (a new key, and the backup overwritten with nothing).

use std::path::Path;
use std::time::{Duration, Instant};

use nodepass_master::model::{Instance, InstanceKind, InstanceStatus};
use nodepass_master::store::{MasterRecord, Snapshot, StoredInstance};
use nodepass_testkit::api::try_call;
use nodepass_testkit::free_port;
use nodepass_testkit::master::{private_state_dir, MasterProc};

/// Enough instances that a restore takes a while, so the kill points fall inside it.
const INSTANCES: usize = 1500;

#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// This long after the process was started.
    Spawned(u64),
    /// This long after sled's `db/conf` appeared (the restore's database exists).
    DbCreated(u64),
    /// When the master logged that the state came from the backup.
    Restored,
    /// When the API listens.
    Serving,
}

fn backup_of(root: &Path) -> Snapshot {
    let text = std::fs::read(root.join("backup.json")).expect("backup.json is there");
    serde_json::from_slice(&text).expect("backup.json is a whole backup")
}

fn ids(snap: &Snapshot) -> Vec<String> {
    let mut v: Vec<String> = snap
        .instances
        .iter()
        .map(|r| r.instance.id.clone())
        .collect();
    v.sort();
    v
}

fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_micros(500));
    }
}

#[test]
fn restore_killed_at_several_points_keeps_key_instances_and_backup() {
    let (_dir, root) = private_state_dir();
    let original = Snapshot {
        master: Some(MasterRecord::generate()),
        instances: (0..INSTANCES)
            .map(|i| StoredInstance {
                instance: Instance {
                    id: format!("{i:08x}"),
                    alias: format!("restored-{i}"),
                    kind: InstanceKind::Client,
                    status: InstanceStatus::Stopped,
                    url: format!("client://k{i}@127.0.0.1:1/127.0.0.1:2"),
                    config: format!("client://k{i}@127.0.0.1:1/127.0.0.1:2?log=info"),
                    // Not started after the restore: the test is about the state only.
                    restart: false,
                    ..Instance::default()
                },
                pid: None,
            })
            .collect(),
    };
    std::fs::write(
        root.join("backup.json"),
        serde_json::to_vec(&original).unwrap(),
    )
    .unwrap();
    let key = original.master.as_ref().unwrap().api_key.clone();
    let port = free_port();

    for point in [
        KillAt::Spawned(30),
        KillAt::DbCreated(0),
        KillAt::DbCreated(3),
        KillAt::DbCreated(15),
        KillAt::DbCreated(60),
        KillAt::Restored,
        KillAt::Serving,
    ] {
        // The operator moved the database aside: the next start restores the backup.
        let _ = std::fs::remove_dir_all(root.join("db"));
        let mut m = MasterProc::launch_fast(&root, port, &[]);
        match point {
            KillAt::Spawned(ms) => std::thread::sleep(Duration::from_millis(ms)),
            KillAt::DbCreated(ms) => {
                wait_until("sled created db/conf", || root.join("db/conf").exists());
                std::thread::sleep(Duration::from_millis(ms));
            }
            KillAt::Restored => {
                m.wait_line(30, |l| l.contains("State restored from the backup"));
            }
            KillAt::Serving => {
                m.wait_ready();
            }
        }
        m.kill9();
        let after_kill = backup_of(&root);
        assert_eq!(after_kill.master, original.master, "killed at {point:?}");
        assert_eq!(ids(&after_kill), ids(&original), "killed at {point:?}");

        // The next start, left alone.
        let mut m = MasterProc::launch_fast(&root, port, &[]);
        let loaded = m.wait_ready();
        assert_eq!(
            loaded,
            key,
            "killed at {point:?}: the next start came up with another API key; output:\n{}",
            m.output()
        );
        let (status, body) = try_call(m.addr, &key, "GET", "/instances", None)
            .expect("the master answers GET /instances");
        assert_eq!(status, 200, "{body}");
        let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        let mut listed: Vec<String> = list
            .iter()
            .filter_map(|i| i["id"].as_str())
            .filter(|id| *id != "********")
            .map(String::from)
            .collect();
        listed.sort();
        assert_eq!(listed, ids(&original), "killed at {point:?}");
        let restored = list
            .iter()
            .find(|i| i["id"] == "00000007")
            .expect("instance 00000007");
        assert_eq!(restored["alias"], "restored-7");
        drop(m);
        let after_start = backup_of(&root);
        assert_eq!(after_start.master, original.master, "killed at {point:?}");
        assert_eq!(ids(&after_start), ids(&original), "killed at {point:?}");
    }
}
