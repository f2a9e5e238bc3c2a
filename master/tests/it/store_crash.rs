//! The store against crashes and careless directories, on a real sled database in a temp
//! dir: a restore cut short is restored again (never taken for an empty state), the backup
//! written at start never shrinks and the previous backup is kept, a state directory other
//! users can reach is refused (not chmod-ed), and the store's files are private.
//! The same interrupted restore with a real master process killed at several points is in
//! tests/store_restore_kill.rs.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nodepass_master::model::{Instance, InstanceKind, InstanceStatus};
use nodepass_master::store::{MasterRecord, Snapshot, Store, StoredInstance};

/// Store::open, retried while an earlier handle in this process still holds sled's file
/// lock: sled's flusher thread lets go of a dropped database on its own schedule. (A real
/// restart is a new process, where the lock is gone with the old one.)
fn open(root: &Path) -> nodepass_master::store::Opened {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Store::open(root) {
            Ok(o) => return o,
            Err(e)
                if format!("{e:#}").contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("cannot open the store: {e:#}"),
        }
    }
}

/// sled::open with the same retry, for writing a database the way an interrupted restore
/// leaves it.
fn open_sled(path: &Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match sled::open(path) {
            Ok(db) => return db,
            Err(sled::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("cannot open {}: {e}", path.display()),
        }
    }
}

fn inst(id: &str) -> StoredInstance {
    StoredInstance {
        instance: Instance {
            id: id.into(),
            alias: format!("alias-{id}"),
            kind: InstanceKind::Client,
            status: InstanceStatus::Stopped,
            url: format!("client://key-{id}@127.0.0.1:1/127.0.0.1:2"),
            config: "c".into(),
            restart: false,
            ..Instance::default()
        },
        pid: None,
    }
}

/// A state directory with a master record, `n` instances and a backup of them; returns the
/// snapshot it holds.
async fn populated(root: &Path, n: usize) -> Snapshot {
    let opened = open(root);
    let store = opened.store;
    let snap = Snapshot {
        master: Some(MasterRecord::generate()),
        instances: (0..n).map(|i| inst(&format!("{i:08x}"))).collect(),
    };
    store.put_master(snap.master.as_ref().unwrap()).unwrap();
    for rec in &snap.instances {
        store.put_instance(rec).unwrap();
    }
    store.flush().await.unwrap();
    store.write_backup(&snap).unwrap();
    snap
}

fn sorted(mut v: Vec<StoredInstance>) -> Vec<StoredInstance> {
    v.sort_by(|a, b| a.instance.id.cmp(&b.instance.id));
    v
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// The state a crash in the middle of a restore leaves: the database moved aside by the
/// operator, a new one created by the restore, part of the backup in it, no more.
#[tokio::test]
async fn interrupted_restore_is_restored_again() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("state");
    let snap = populated(&root, 20).await;
    std::fs::rename(root.join("db"), root.join("db.broken")).unwrap();

    for partial in [0usize, 1, 7] {
        // What the interrupted restore got onto disk (sled's own files, some records).
        {
            let db = open_sled(&root.join("db"));
            let tree = db.open_tree("instances").unwrap();
            for rec in snap.instances.iter().take(partial) {
                tree.insert(rec.instance.id.as_bytes(), serde_json::to_vec(rec).unwrap())
                    .unwrap();
            }
            db.flush().unwrap();
        }
        let opened = open(&root);
        assert!(
            opened.restored_from.is_some(),
            "a database without its format marker must be restored from the backup \
             ({partial} records were in it)"
        );
        assert_eq!(opened.snapshot.master, snap.master);
        assert_eq!(
            sorted(opened.snapshot.instances.clone()),
            sorted(snap.instances.clone())
        );
        drop(opened);
        // The completed restore is the state from now on: opened again, nothing restored.
        let again = open(&root);
        assert!(again.restored_from.is_none());
        assert_eq!(again.snapshot.master, snap.master);
        assert_eq!(again.snapshot.instances.len(), snap.instances.len());
        drop(again);
        std::fs::remove_dir_all(root.join("db")).unwrap();
    }
}

/// The backup written at start is skipped when it would lose instances or the master's
/// identity; a normal backup keeps the one before it as backup.prev.json.
#[tokio::test]
async fn start_never_shrinks_the_backup_and_the_previous_one_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("state");
    let snap = populated(&root, 5).await;
    let store = open(&root).store;
    let backup = root.join("backup.json");
    let saved = std::fs::read(&backup).unwrap();

    let fewer = Snapshot {
        master: snap.master.clone(),
        instances: snap.instances[..2].to_vec(),
    };
    assert!(!store.write_backup_at_start(&fewer).unwrap());
    let other_master = Snapshot {
        master: Some(MasterRecord::generate()),
        instances: snap.instances.clone(),
    };
    assert!(!store.write_backup_at_start(&other_master).unwrap());
    let empty = Snapshot::default();
    assert!(!store.write_backup_at_start(&empty).unwrap());
    assert_eq!(
        std::fs::read(&backup).unwrap(),
        saved,
        "the backup was replaced"
    );

    // Same master, one more instance: written, and the old backup kept beside it.
    let mut more = snap.clone();
    more.instances.push(inst("ffffffff"));
    assert!(store.write_backup_at_start(&more).unwrap());
    assert_eq!(std::fs::read(root.join("backup.prev.json")).unwrap(), saved);
    let now: Snapshot = serde_json::from_slice(&std::fs::read(&backup).unwrap()).unwrap();
    assert_eq!(now.instances.len(), 6);

    // The periodic backup always writes (the operator may really have deleted instances).
    store.write_backup(&fewer).unwrap();
    let prev: Snapshot =
        serde_json::from_slice(&std::fs::read(root.join("backup.prev.json")).unwrap()).unwrap();
    assert_eq!(prev.instances.len(), 6);

    // A broken backup.json with a good previous one: the restore uses the previous one.
    drop(store);
    std::fs::write(&backup, b"{ not json").unwrap();
    std::fs::remove_dir_all(root.join("db")).unwrap();
    let opened = open(&root);
    assert_eq!(
        opened.restored_from.as_deref(),
        Some(root.join("backup.prev.json").as_path())
    );
    assert_eq!(opened.snapshot.instances.len(), 6);
}

#[test]
fn loose_state_dir_is_refused_not_changed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shared");
    std::fs::create_dir(&root).unwrap();
    for loose in [0o755, 0o770, 0o701] {
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(loose)).unwrap();
        let err = match Store::open(&root) {
            Ok(_) => panic!("a state directory of mode {loose:o} was accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(&format!("{loose:04o}")), "{err}");
        assert!(err.contains("chmod 700"), "{err}");
        assert!(err.contains("NP_STATE_DIR"), "{err}");
        assert_eq!(mode(&root), loose, "the directory's mode was changed");
        assert!(
            std::fs::read_dir(&root).unwrap().next().is_none(),
            "files were created in a refused directory"
        );
    }
    // A private one is used as it is.
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert!(Store::open(&root).is_ok());
}

#[tokio::test]
async fn store_files_are_private() {
    let dir = tempfile::tempdir().unwrap();
    // Created by the store: 0700 even under a permissive umask's default of 0755.
    let root = dir.path().join("new").join("state");
    populated(&root, 3).await;
    let store = open(&root).store;
    store.write_backup(&Snapshot::default()).unwrap();
    drop(store);
    assert_eq!(mode(&root), 0o700);
    let mut stack = vec![root.clone()];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                assert_eq!(mode(&p), 0o700, "{}", p.display());
                stack.push(p);
            } else {
                assert_eq!(mode(&p), 0o600, "{}", p.display());
                files += 1;
            }
        }
    }
    // sled's conf and db files, backup.json and backup.prev.json at least.
    assert!(files >= 4, "only {files} files found");
}
