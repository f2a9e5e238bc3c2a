//! Durable state in sled: every instance (with its traffic totals and the pid of its last
//! worker), and the master record (API key, master id, alias).
//!
//! Layout of the state directory (`NP_STATE_DIR`, default `<exe dir>/nodepass-state`):
//! `db/` is the sled database, `backup.json` a plain JSON copy written at start and every
//! NP_RELOAD_INTERVAL (atomically: temp file, fsync, rename), `backup.prev.json` the backup
//! before it. When `db/` is missing, or lacks the format marker (new, or a restore a crash
//! cut short), and a backup exists, the master restores from the backup; so the recovery
//! path for a corrupt database is "move `db/` aside and start again", which the error says.
//! The directory must be private to the master's user (0700, created so); the store's
//! files are 0600.

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

/// Whether opening failed only because another handle still holds sled's file lock. sled
/// 0.34 reports that as an `Other` error whose text says "could not acquire lock" (the
/// `WouldBlock` is only inside the text), so both are recognised.
fn is_lock_busy(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock")
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
    ///
    /// The database counts as real only once it holds the format marker, which a new
    /// database gets at once and a restore writes last, after the restored data is on disk.
    /// A database without the marker is a creation or a restore that a crash cut short: when
    /// a backup exists it is restored (again) from it, so an interrupted restore can never
    /// pass for an empty state (which would mean a new API key and, at the next backup, the
    /// loss of the old state).
    pub fn open(root: &Path) -> Result<Opened> {
        prepare_root(root)?;
        let db_path = root.join("db");
        let backup = root.join(BACKUP);
        let handles =
            open_db(&db_path).map_err(|e| corrupt_error(&db_path, &backup, &e.to_string()))?;
        let marker = handles
            .db
            .get(FORMAT_KEY)
            .map_err(|e| corrupt_error(&db_path, &backup, &e.to_string()))?;
        let empty =
            handles.instances.is_empty() && handles.db.get(MASTER_KEY).ok().flatten().is_none();
        let store = Store {
            root: root.to_path_buf(),
            handles: Arc::new(RwLock::new(Some(handles))),
            broken: Arc::new(AtomicBool::new(false)),
            write_errors: Arc::new(AtomicU64::new(0)),
        };
        let opened = match marker.as_deref() {
            Some(FORMAT) => {
                let snapshot = store
                    .load()
                    .map_err(|e| corrupt_error(&db_path, &backup, &format!("{e:#}")))?;
                Opened {
                    store,
                    snapshot,
                    restored_from: None,
                }
            }
            Some(other) => anyhow::bail!(
                "The state database {} has the format {:?}, which this version does not read \
                 (it reads {:?}); start the nodepass version that wrote it, or move {} aside \
                 to restore from the backup {}",
                db_path.display(),
                String::from_utf8_lossy(other),
                String::from_utf8_lossy(FORMAT),
                db_path.display(),
                backup.display()
            ),
            None => match store.read_backup()? {
                Some((from, snapshot)) => {
                    store.import(&snapshot)?;
                    Opened {
                        store,
                        snapshot,
                        restored_from: Some(from),
                    }
                }
                None => {
                    // New, or written by a version that set the marker lazily: nothing to
                    // restore from, so what is there is the state.
                    if !empty {
                        tracing::warn!(
                            "The state database {} has no format marker; using it as is",
                            db_path.display()
                        );
                    }
                    let h = store.handles()?;
                    h.db.insert(FORMAT_KEY, FORMAT)
                        .context("Cannot write to the new state database")?;
                    h.db.flush()
                        .context("Cannot write to the new state database")?;
                    let snapshot = store
                        .load()
                        .map_err(|e| corrupt_error(&db_path, &backup, &format!("{e:#}")))?;
                    Opened {
                        store,
                        snapshot,
                        restored_from: None,
                    }
                }
            },
        };
        make_private(root);
        Ok(opened)
    }

    /// The newest readable backup: `backup.json`, else the one before it (a backup that is
    /// missing or unreadable when its predecessor is fine says so in a warning).
    fn read_backup(&self) -> Result<Option<(PathBuf, Snapshot)>> {
        let current = self.backup_path();
        let previous = self.root.join(PREVIOUS_BACKUP);
        let read = |path: &Path| -> Result<Option<Snapshot>> {
            let text = match std::fs::read(path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("Cannot read the backup {}", path.display())))
                }
            };
            serde_json::from_slice(&text).map(Some).with_context(|| {
                format!(
                    "The backup {} is not valid JSON; move it aside to use {} or, without \
                     either, to start with an empty state (a new API key)",
                    path.display(),
                    previous.display()
                )
            })
        };
        match read(&current) {
            Ok(Some(snap)) => Ok(Some((current, snap))),
            first => match read(&previous) {
                Ok(Some(snap)) => {
                    if let Err(e) = &first {
                        tracing::warn!("{e:#}; using the previous backup");
                    }
                    Ok(Some((previous, snap)))
                }
                Ok(None) => first.map(|_| None),
                Err(e) => first.and(Err(e)),
            },
        }
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of the JSON backup.
    pub fn backup_path(&self) -> PathBuf {
        self.root.join(BACKUP)
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
                    if is_lock_busy(&e) && tokio::time::Instant::now() < deadline =>
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

    /// Writes a backup into the database: leftovers of an interrupted attempt out, the data
    /// in and on disk, and only then the format marker that makes the database count.
    fn import(&self, snap: &Snapshot) -> Result<()> {
        let h = self.handles()?;
        h.instances
            .clear()
            .context("Cannot clear the state database for the restore")?;
        h.db.remove(MASTER_KEY)
            .context("Cannot clear the state database for the restore")?;
        for rec in &snap.instances {
            self.put_instance(rec)?;
        }
        if let Some(m) = &snap.master {
            self.put_master(m)?;
        }
        h.db.flush()
            .context("Cannot write the restored state to disk")?;
        h.db.insert(FORMAT_KEY, FORMAT)?;
        h.db.flush()
            .context("Cannot write the restored state to disk")?;
        Ok(())
    }

    /// Replaces everything in the store with `snap` in one sled transaction (all of it or
    /// none of it), then flushes: what `nodepass import` writes.
    pub fn replace_all(&self, snap: &Snapshot) -> Result<()> {
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        use sled::Transactional;
        let h = self.handles()?;
        let old: Vec<sled::IVec> = h
            .instances
            .iter()
            .keys()
            .collect::<sled::Result<_>>()
            .context("Cannot read the state database")?;
        let mut records = Vec::with_capacity(snap.instances.len());
        for rec in &snap.instances {
            records.push((rec.instance.id.clone(), serde_json::to_vec(rec)?));
        }
        let master = snap.master.as_ref().map(serde_json::to_vec).transpose()?;
        let r: Result<(), TransactionError<()>> =
            (&*h.db, &h.instances).transaction(|(db, instances)| {
                for key in &old {
                    instances.remove(key.clone())?;
                }
                for (id, bytes) in &records {
                    instances.insert(id.as_bytes(), bytes.as_slice())?;
                }
                match &master {
                    Some(m) => db.insert(MASTER_KEY, m.as_slice())?,
                    None => db.remove(MASTER_KEY)?,
                };
                db.insert(FORMAT_KEY, FORMAT)?;
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        r.map_err(|e| anyhow::anyhow!("{e:?}"))
            .context("Cannot write the imported state; the state is unchanged")?;
        h.db.flush()
            .context("Cannot write the imported state to disk (disk full?)")?;
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

    /// Writes `backup.json` atomically from the given snapshot, keeping the one it replaces
    /// as `backup.prev.json`. At every moment `backup.json` is a complete backup: the old one
    /// is hard-linked to its new name before the new one is renamed over it.
    pub fn write_backup(&self, snap: &Snapshot) -> Result<()> {
        let path = self.backup_path();
        let previous = self.root.join(PREVIOUS_BACKUP);
        let tmp = self.root.join("backup.json.tmp");
        let bytes = serde_json::to_vec_pretty(snap)?;
        (|| -> std::io::Result<()> {
            use std::io::Write;
            let mut f = create_private(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            if path.exists() {
                match std::fs::remove_file(&previous) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
                std::fs::hard_link(&path, &previous)?;
            }
            std::fs::rename(&tmp, &path)?;
            // The renames are durable once the directory is.
            std::fs::File::open(&self.root)?.sync_all()?;
            Ok(())
        })()
        .with_context(|| format!("Cannot write the backup {}", path.display()))
    }

    /// The backup written at start: skipped (with a warning) when the existing backup holds
    /// more than `snap`, i.e. more instances or another master's identity. Such a start is
    /// almost always a state that lost data (a database moved away or damaged without a
    /// restore), and overwriting the backup would make the loss permanent; the periodic
    /// backup, once the operator has had a look, writes the current state as usual.
    /// Returns whether the backup was written.
    pub fn write_backup_at_start(&self, snap: &Snapshot) -> Result<bool> {
        if let Ok(text) = std::fs::read(self.backup_path()) {
            if let Ok(old) = serde_json::from_slice::<Snapshot>(&text) {
                let other_master = match (&old.master, &snap.master) {
                    (Some(o), Some(n)) => o.mid != n.mid,
                    (Some(_), None) => true,
                    _ => false,
                };
                if other_master || old.instances.len() > snap.instances.len() {
                    tracing::warn!(
                        "The backup {} holds more than the current state ({} instances{}, \
                         now {}); it is kept. If the state is right, the next periodic backup \
                         replaces it; if not, stop the master, move {} aside and start again \
                         to restore the backup",
                        self.backup_path().display(),
                        old.instances.len(),
                        if other_master {
                            ", another master id"
                        } else {
                            ""
                        },
                        snap.instances.len(),
                        self.root.join("db").display()
                    );
                    return Ok(false);
                }
            }
        }
        self.write_backup(snap).map(|()| true)
    }
}

/// Name of the backup in the state directory.
const BACKUP: &str = "backup.json";
/// Name of the backup before it.
const PREVIOUS_BACKUP: &str = "backup.prev.json";

/// Creates the state directory 0700, or checks that an existing one is private. An
/// existing directory that other users can reach is refused rather than changed: it holds
/// the API key, and chmod-ing a directory the operator pointed us at (a shared one, say)
/// would break whatever else uses it.
fn prepare_root(root: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match std::fs::metadata(root) {
        Ok(meta) if !meta.is_dir() => anyhow::bail!(
            "The state directory {} is not a directory; set NP_STATE_DIR to a directory",
            root.display()
        ),
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                anyhow::bail!(
                    "The state directory {dir} is open to other users (mode {mode:04o}) but \
                     holds the API key and tunnel keys; make it private (chmod 700 {dir}) or \
                     set NP_STATE_DIR to a directory of its own",
                    dir = root.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).with_context(|| {
                    format!(
                        "Cannot create {}: set NP_STATE_DIR to a writable directory",
                        parent.display()
                    )
                })?;
            }
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(root)
                .with_context(|| {
                    format!(
                        "Cannot create the state directory {}: set NP_STATE_DIR to a \
                         writable directory",
                        root.display()
                    )
                })
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "Cannot read the state directory {}: set NP_STATE_DIR to a directory the \
             master's user owns",
            root.display()
        ))),
    }
}

/// Makes everything the store created under `root` private: files 0600, directories
/// 0700. sled creates its files with the process umask; the directory is private already,
/// so this is a second fence (a later `chmod 755` of the directory exposes nothing).
fn make_private(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            if kind.is_dir() {
                let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700));
                stack.push(path);
            } else if kind.is_file() {
                let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
            }
        }
    }
}

/// Creates (or truncates) a file readable by the master's user only.
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
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

#[cfg(test)]
mod lock_tests {
    use super::is_lock_busy;
    use std::io::{Error, ErrorKind};

    #[test]
    fn sleds_lock_error_is_recognised_as_busy() {
        // sled 0.34's own wording (config.rs): kind Other, the WouldBlock only in the text.
        let sled =
            Error::other("could not acquire lock on \"/x/db\": Os { code: 11, kind: WouldBlock }");
        assert!(is_lock_busy(&sled));
        assert!(is_lock_busy(&Error::from(ErrorKind::WouldBlock)));
        assert!(!is_lock_busy(&Error::other("disk full")));
    }
}
