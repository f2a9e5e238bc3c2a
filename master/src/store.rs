//! Durable state in sled: every instance (with its traffic totals and the pid of its last
//! worker), and the master record (API key, master id, alias).
//!
//! Layout of the state directory (`NP_STATE_DIR`, default `<exe dir>/nodepass-state`):
//! `db/` is the sled database, `backup.json` a plain JSON copy written at start and every
//! NP_RELOAD_INTERVAL (atomically: temp file, fsync, rename). When `db/` is missing or
//! empty and a backup exists, the master restores from the backup; so the recovery path for
//! a corrupt database is "move `db/` aside and start again", which the error says.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::model::Instance;

/// The master's own record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterRecord {
    /// 32 lowercase hex characters.
    pub api_key: String,
    /// 16 lowercase hex characters.
    pub mid: String,
    pub alias: String,
}

impl MasterRecord {
    pub fn generate() -> Self {
        MasterRecord {
            api_key: new_api_key(),
            mid: hex::encode(rand::random::<[u8; 8]>()),
            alias: String::new(),
        }
    }
}

/// A fresh API key: 16 random bytes as lowercase hex.
pub fn new_api_key() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// One instance as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredInstance {
    pub instance: Instance,
    /// Pid of the worker last started for it, to find and end a stray one after a crash.
    #[serde(default)]
    pub pid: Option<u32>,
}

/// Everything in the store, as loaded at start.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub master: Option<MasterRecord>,
    pub instances: Vec<StoredInstance>,
}

const MASTER_KEY: &[u8] = b"master";
const FORMAT_KEY: &[u8] = b"format";
const FORMAT: &[u8] = b"nodepass-master-1";
/// How long a reopen waits for the old handle to release sled's file lock.
const REOPEN_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The sled handles; replaced as a whole when the database is reopened after a write
/// error (sled refuses every later write once one failed, e.g. on a full disk).
#[derive(Clone)]
struct Handles {
    db: sled::Db,
    instances: sled::Tree,
}

/// The open store (cheap to clone; clones share the handles).
#[derive(Clone)]
pub struct Store {
    root: PathBuf,
    handles: Arc<RwLock<Option<Handles>>>,
    /// A write failed since the last successful reopen.
    broken: Arc<AtomicBool>,
    /// Failed writes and flushes since the master started (a metric).
    write_errors: Arc<AtomicU64>,
}

fn open_db(db_path: &Path) -> sled::Result<Handles> {
    let db = sled::Config::new()
        .path(db_path)
        // The data is small; keep the page cache small so the master stays light.
        .cache_capacity(16 * 1024 * 1024)
        .flush_every_ms(Some(500))
        .open()?;
    let instances = db.open_tree("instances")?;
    Ok(Handles { db, instances })
}

/// What opening found.
pub struct Opened {
    pub store: Store,
    pub snapshot: Snapshot,
    /// Set when the state came from `backup.json` because the database was new.
    pub restored_from: Option<PathBuf>,
}

impl Store {
    /// Opens (or creates) the store under `root` and loads everything.
    pub fn open(root: &Path) -> Result<Opened> {
        std::fs::create_dir_all(root).with_context(|| {
            format!(
                "Cannot create the state directory {}: set NP_STATE_DIR to a writable directory",
                root.display()
            )
        })?;
        // The directory holds the API key: keep it private to the master's user.
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(root) {
                if meta.permissions().mode() & 0o077 != 0 {
                    let _ = std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700));
                }
            }
        }
        let db_path = root.join("db");
        let backup = root.join("backup.json");
        let had_db = db_path.join("conf").exists();
        let handles =
            open_db(&db_path).map_err(|e| corrupt_error(&db_path, &backup, &e.to_string()))?;
        let store = Store {
            root: root.to_path_buf(),
            handles: Arc::new(RwLock::new(Some(handles))),
            broken: Arc::new(AtomicBool::new(false)),
            write_errors: Arc::new(AtomicU64::new(0)),
        };
        if !had_db && backup.exists() {
            let text = std::fs::read(&backup)
                .with_context(|| format!("Cannot read the backup {}", backup.display()))?;
            let snapshot: Snapshot = serde_json::from_slice(&text).with_context(|| {
                format!(
                    "The backup {} is not valid JSON; move it aside to start with an empty state",
                    backup.display()
                )
            })?;
            store.import(&snapshot)?;
            return Ok(Opened {
                store,
                snapshot,
                restored_from: Some(backup),
            });
        }
        if !had_db {
            store
                .handles()?
                .db
                .insert(FORMAT_KEY, FORMAT)
                .context("Cannot write to the new state database")?;
        }
        let snapshot = store
            .load()
            .map_err(|e| corrupt_error(&db_path, &backup, &format!("{e:#}")))?;
        Ok(Opened {
            store,
            snapshot,
            restored_from: None,
        })
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of the JSON backup.
    pub fn backup_path(&self) -> PathBuf {
        self.root.join("backup.json")
    }

    fn handles(&self) -> Result<Handles> {
        self.handles
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .context("The state database is being reopened; the change is retried")
    }

    /// Whether a write failed since the database was last (re)opened.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// Writes and flushes that failed since the master started.
    pub fn write_errors(&self) -> u64 {
        self.write_errors.load(Ordering::Relaxed)
    }

    fn mark<T>(&self, r: Result<T>) -> Result<T> {
        if r.is_err() {
            self.write_errors.fetch_add(1, Ordering::Relaxed);
            self.broken.store(true, Ordering::Relaxed);
        }
        r
    }

    /// Closes and reopens the database, then writes `snap` (the whole in-memory state) and
    /// flushes: the way back after a write error once the disk is usable again.
    pub async fn reopen_with(&self, snap: &Snapshot) -> Result<()> {
        let db_path = self.root.join("db");
        // Drop ours first: sled holds a lock on its files while any handle lives. Another
        // task may still hold a clone for a moment, and sled's flusher thread lets go of
        // the old handle on its own schedule, so the lock is retried for a bounded time.
        *self.handles.write().unwrap_or_else(|p| p.into_inner()) = None;
        let deadline = tokio::time::Instant::now() + REOPEN_LOCK_WAIT;
        let handles = loop {
            match open_db(&db_path) {
                Ok(h) => break h,
                Err(sled::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!(
                        "Cannot reopen the state database {}",
                        db_path.display()
                    )))
                }
            }
        };
        *self.handles.write().unwrap_or_else(|p| p.into_inner()) = Some(handles);
        for rec in &snap.instances {
            self.put_instance(rec)?;
        }
        if let Some(m) = &snap.master {
            self.put_master(m)?;
        }
        let h = self.handles()?;
        let keep: std::collections::HashSet<&[u8]> = snap
            .instances
            .iter()
            .map(|r| r.instance.id.as_bytes())
            .collect();
        for key in h.instances.iter().keys() {
            let key = key?;
            if !keep.contains(key.as_ref()) {
                h.instances.remove(key)?;
            }
        }
        h.db.flush_async().await?;
        self.broken.store(false, Ordering::Relaxed);
        Ok(())
    }

    fn load(&self) -> Result<Snapshot> {
        let h = self.handles()?;
        let master = match h.db.get(MASTER_KEY)? {
            Some(v) => Some(
                serde_json::from_slice::<MasterRecord>(&v)
                    .context("the master record is unreadable")?,
            ),
            None => None,
        };
        let mut instances = Vec::new();
        for item in h.instances.iter() {
            let (k, v) = item?;
            let rec: StoredInstance = serde_json::from_slice(&v).with_context(|| {
                format!(
                    "instance record {} is unreadable",
                    String::from_utf8_lossy(&k)
                )
            })?;
            instances.push(rec);
        }
        Ok(Snapshot { master, instances })
    }

    fn import(&self, snap: &Snapshot) -> Result<()> {
        if let Some(m) = &snap.master {
            self.put_master(m)?;
        }
        for rec in &snap.instances {
            self.put_instance(rec)?;
        }
        let h = self.handles()?;
        h.db.insert(FORMAT_KEY, FORMAT)?;
        h.db.flush()
            .context("Cannot write the restored state to disk")?;
        Ok(())
    }

    /// Stages the master record (durable after [`Store::flush`]).
    pub fn put_master(&self, m: &MasterRecord) -> Result<()> {
        let bytes = serde_json::to_vec(m)?;
        let r = self.handles().and_then(|h| {
            h.db.insert(MASTER_KEY, bytes)
                .context("Cannot write the master record")
        });
        self.mark(r).map(|_| ())
    }

    /// Stages one instance (durable after [`Store::flush`]).
    pub fn put_instance(&self, rec: &StoredInstance) -> Result<()> {
        let bytes = serde_json::to_vec(rec)?;
        let r = self.handles().and_then(|h| {
            h.instances
                .insert(rec.instance.id.as_bytes(), bytes)
                .with_context(|| format!("Cannot write instance {}", rec.instance.id))
        });
        self.mark(r).map(|_| ())
    }

    /// Stages the removal of one instance.
    pub fn remove_instance(&self, id: &str) -> Result<()> {
        let r = self.handles().and_then(|h| {
            h.instances
                .remove(id.as_bytes())
                .with_context(|| format!("Cannot remove instance {id}"))
        });
        self.mark(r).map(|_| ())
    }

    /// Makes every staged write durable.
    pub async fn flush(&self) -> Result<()> {
        let h = self.handles()?;
        let r = h.db.flush_async().await.with_context(|| {
            format!(
                "Cannot save the state to {} (disk full or not writable?)",
                self.root.display()
            )
        });
        self.mark(r).map(|_| ())
    }

    /// Writes `backup.json` atomically from the given snapshot.
    pub fn write_backup(&self, snap: &Snapshot) -> Result<()> {
        let path = self.backup_path();
        let tmp = self.root.join("backup.json.tmp");
        let bytes = serde_json::to_vec_pretty(snap)?;
        (|| -> std::io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            Ok(())
        })()
        .with_context(|| format!("Cannot write the backup {}", path.display()))
    }
}

fn corrupt_error(db: &Path, backup: &Path, cause: &str) -> anyhow::Error {
    let how = if backup.exists() {
        format!(
            "To recover, stop every master using it, move the database aside \
             (mv {db} {db}.broken) and start the master again: it restores the last backup \
             {backup}.",
            db = db.display(),
            backup = backup.display()
        )
    } else {
        format!(
            "No backup exists at {}; moving {} aside starts with an empty state (a new API key).",
            backup.display(),
            db.display()
        )
    };
    anyhow::anyhow!(
        "The state database {} cannot be opened or read: {cause}. {how}",
        db.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Instance, InstanceKind, InstanceStatus, Meta};

    fn inst(id: &str) -> StoredInstance {
        StoredInstance {
            instance: Instance {
                id: id.into(),
                alias: "a".into(),
                kind: InstanceKind::Client,
                status: InstanceStatus::Stopped,
                url: "client://127.0.0.1:1/127.0.0.1:2".into(),
                config: "c".into(),
                restart: true,
                meta: Meta::default(),
                mode: 0,
                ping: 0,
                pool: 0,
                tcps: 0,
                udps: 0,
                tcprx: 10,
                tcptx: 20,
                udprx: 0,
                udptx: 0,
            },
            pid: Some(42),
        }
    }

    #[tokio::test]
    async fn roundtrip_backup_and_restore() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("state");
        let master = MasterRecord::generate();
        {
            let opened = Store::open(&root).unwrap();
            assert!(opened.snapshot.master.is_none());
            let s = opened.store;
            s.put_master(&master).unwrap();
            s.put_instance(&inst("aaaaaaaa")).unwrap();
            s.put_instance(&inst("bbbbbbbb")).unwrap();
            s.remove_instance("bbbbbbbb").unwrap();
            s.flush().await.unwrap();
            let snap = s.load().unwrap();
            s.write_backup(&snap).unwrap();
        }
        let opened = Store::open(&root).unwrap();
        assert_eq!(opened.snapshot.master.as_ref(), Some(&master));
        assert_eq!(opened.snapshot.instances, vec![inst("aaaaaaaa")]);
        assert!(opened.restored_from.is_none());
        // The API key is in there: private to the master's user.
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("backup.json")), 0o600);
        drop(opened);

        // Corrupt the database: the error names the backup and how to recover.
        let conf = root.join("db").join("conf");
        std::fs::write(&conf, b"garbage").unwrap();
        for entry in std::fs::read_dir(root.join("db")).unwrap() {
            let p = entry.unwrap().path();
            if p.is_file() && p != conf {
                std::fs::write(&p, vec![0xffu8; 4096]).unwrap();
            }
        }
        match Store::open(&root) {
            Err(err) => {
                let msg = format!("{err:#}");
                assert!(msg.contains("backup.json"), "{msg}");
                assert!(msg.contains("mv "), "{msg}");
            }
            Ok(o) => {
                // sled may tolerate this damage; then the data must still be consistent.
                assert!(o.snapshot.master.is_some());
            }
        }
        // Recovery: move the database aside, start again, get the backup back.
        std::fs::rename(root.join("db"), root.join("db.broken")).unwrap();
        let opened = Store::open(&root).unwrap();
        assert!(opened.restored_from.is_some());
        assert_eq!(opened.snapshot.master.as_ref(), Some(&master));
        assert_eq!(opened.snapshot.instances, vec![inst("aaaaaaaa")]);
    }
}
