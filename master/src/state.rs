//! The master's in-memory state and every operation the API performs on it, on typed
//! values (the HTTP layer, [`crate::api`], parses and renders).
//!
//! One lock guards the registry (instances and the master record); it is never held across
//! an await. Only this module writes the registry: the API calls the operations below, and
//! each instance's supervisor task ([`crate::supervisor`]), which owns the child process,
//! reports what happened through [`InstanceSink`]. Commands to a task carry what it needs
//! (the URL), so data flows one way. Every mutating operation stages its writes in the store
//! under the lock and flushes after releasing it, before the API answers; a failed write
//! keeps the change in memory, marks the record dirty so the periodic save retries it, and
//! is reported as [`StateError::SaveFailed`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use nodepass_proto::report::Stats;
use nodepass_proto::tunables::Tunables;
use nodepass_proto::url::{Inherited, MasterUrl};
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::counters::TrafficCounters;
use crate::events::EventHub;
use crate::metrics::{InstanceFigures, MasterFigures, Metrics};
use crate::model::*;
use crate::store::{new_api_key, MasterRecord, Snapshot, Store, StoredInstance};
use crate::supervisor::{self, Command, InstanceSink, SupervisorSettings};

/// Settings fixed at start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub url: MasterUrl,
    pub inherited: Inherited,
    pub tunables: Tunables,
    /// The program run as `<exe> worker <url>` for each instance.
    pub worker_exe: PathBuf,
    /// Colour codes in the master's own output (on a terminal only).
    pub colour: bool,
}

/// Why an operation on the state was refused or failed. The API layer gives each its
/// status code and the reference's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateError {
    /// No instance has that id.
    NotFound,
    /// The API key record cannot be replaced or deleted.
    KeyRecordFixed,
    /// A PUT gave the URL the instance already has.
    UrlUnchanged,
    /// The change is in memory but could not be saved (the text says why and what next).
    SaveFailed(String),
    /// The instance's command queue is full (a client sending actions faster than its
    /// worker stops and starts): nothing was changed.
    Busy,
}

/// Queues `cmd` for an instance's supervisor task. Called with the registry lock held, so
/// it never waits: a full queue is [`StateError::Busy`]; a task that is gone (the master is
/// stopping) takes nothing, which is no error.
fn command(ctl: &mpsc::Sender<Command>, cmd: Command) -> Result<(), StateError> {
    match ctl.try_send(cmd) {
        Err(mpsc::error::TrySendError::Full(_)) => Err(StateError::Busy),
        Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => Ok(()),
    }
}

/// One registered instance.
struct Entry {
    inst: Instance,
    pid: Option<u32>,
    traffic: TrafficCounters,
    /// Worker process facts for the metrics (this master's lifetime only, not stored).
    worker: WorkerFacts,
    /// Changed since last saved (counters, or a failed write).
    dirty: bool,
    ctl: mpsc::Sender<Command>,
}

/// What the metrics show about an instance's worker processes since this master started.
#[derive(Debug, Clone, Copy, Default)]
struct WorkerFacts {
    /// When the current worker was spawned; `None` while no worker process lives.
    started: Option<Instant>,
    /// Worker processes spawned for this instance.
    spawns: u64,
    /// Exit code of the last worker that ended (128 + signal number when killed by one).
    last_exit: Option<i32>,
}

impl MasterFigures for Master {
    /// Every instance (not the key record) as the metrics show it, in id order.
    fn instance_figures(&self) -> Vec<InstanceFigures> {
        let reg = self.lock();
        let now = Instant::now();
        reg.instances
            .values()
            .map(|e| {
                let i = &e.inst;
                InstanceFigures {
                    id: i.id.clone(),
                    alias: i.alias.clone(),
                    kind: i.kind,
                    status: i.status,
                    traffic: [i.tcprx, i.tcptx, i.udprx, i.udptx],
                    tcps: i.tcps,
                    udps: i.udps,
                    pool: i.pool,
                    ping_ms: i.ping,
                    restarts: e.worker.spawns.saturating_sub(1),
                    last_exit: e.worker.last_exit,
                    worker_uptime: e
                        .worker
                        .started
                        .map(|t| now.saturating_duration_since(t).as_secs_f64()),
                }
            })
            .collect()
    }

    /// Worker processes that could not be spawned since this master started.
    fn spawn_failures(&self) -> u64 {
        self.spawn_failures.load(Ordering::Relaxed)
    }

    fn sse_subscribers(&self) -> usize {
        self.events.subscriber_count()
    }

    fn sse_dropped_events(&self) -> u64 {
        self.events.dropped_events()
    }

    fn store_write_errors(&self) -> u64 {
        self.store.write_errors()
    }
}

impl Entry {
    fn stored(&self) -> StoredInstance {
        StoredInstance {
            instance: self.inst.clone(),
            pid: self.pid,
        }
    }
}

struct Registry {
    master: MasterRecord,
    instances: BTreeMap<String, Entry>,
    master_dirty: bool,
}

/// The master: settings, store, events and the registry.
pub struct Master {
    pub settings: Settings,
    pub store: Store,
    pub events: EventHub,
    pub started: Instant,
    /// At most 10 TCP probes at once, as the reference.
    pub tcping_slots: Semaphore,
    /// The Prometheus registry behind GET /metrics (reads this state at scrape time).
    pub metrics: Metrics,
    /// Worker processes that could not be spawned at all.
    spawn_failures: AtomicU64,
    registry: Mutex<Registry>,
    /// Ourselves, as the sink every supervisor task reports to.
    me: Weak<Master>,
}

/// The API key record rendered as an instance.
pub fn key_instance(m: &MasterRecord) -> Instance {
    Instance {
        id: API_KEY_ID.to_string(),
        alias: m.alias.clone(),
        kind: InstanceKind::NotApplicable,
        status: InstanceStatus::NotApplicable,
        url: m.api_key.clone(),
        config: m.mid.clone(),
        restart: false,
        ..Instance::default()
    }
}

fn save_error(e: anyhow::Error, every: std::time::Duration) -> StateError {
    StateError::SaveFailed(format!(
        "Failed to save state: {e:#}. The change is kept in memory and saving is retried every {}s",
        every.as_secs().max(1)
    ))
}

fn zero_gauges(inst: &mut Instance) {
    inst.ping = 0;
    inst.pool = 0;
    inst.tcps = 0;
    inst.udps = 0;
}

fn clamp_i32(v: u64) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

impl Master {
    /// Builds the master from what the store held. Returns it with the ids to start.
    pub fn new(settings: Settings, store: Store, snapshot: Snapshot) -> (Arc<Self>, Vec<String>) {
        let (master, fresh_key) = match snapshot.master {
            Some(m) => (m, false),
            None => (MasterRecord::generate(), true),
        };
        let master = Arc::new_cyclic(|me: &Weak<Master>| Master {
            settings,
            store,
            events: EventHub::new(),
            started: Instant::now(),
            tcping_slots: Semaphore::new(10),
            metrics: Metrics::new(me.clone() as Weak<dyn MasterFigures>),
            spawn_failures: AtomicU64::new(0),
            registry: Mutex::new(Registry {
                master,
                instances: BTreeMap::new(),
                master_dirty: fresh_key,
            }),
            me: me.clone(),
        });
        let mut autostart = Vec::new();
        {
            let mut reg = master.lock();
            for rec in snapshot.instances {
                let mut inst = rec.instance;
                if Target::parse(&inst.id) == Target::ApiKey {
                    continue;
                }
                inst.status = InstanceStatus::Stopped;
                zero_gauges(&mut inst);
                if inst.restart {
                    autostart.push(inst.id.clone());
                }
                let ctl = master.supervise(&inst.id);
                reg.instances.insert(
                    inst.id.clone(),
                    Entry {
                        inst,
                        pid: rec.pid,
                        traffic: TrafficCounters::default(),
                        worker: WorkerFacts::default(),
                        dirty: false,
                        ctl,
                    },
                );
            }
        }
        (master, autostart)
    }

    /// Starts the supervisor task of instance `id`.
    fn supervise(&self, id: &str) -> mpsc::Sender<Command> {
        let sink: Weak<dyn InstanceSink> = self.me.clone();
        let settings = SupervisorSettings {
            worker_exe: self.settings.worker_exe.clone(),
            colour: self.settings.colour,
            report_interval: self.settings.tunables.report_interval,
            shutdown_timeout: self.settings.tunables.shutdown_timeout,
        };
        supervisor::spawn(sink, settings, id.to_string())
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn api_key(&self) -> String {
        self.lock().master.api_key.clone()
    }

    /// Compares an `X-API-Key` header value with the key in constant time.
    pub fn key_matches(&self, given: &[u8]) -> bool {
        let reg = self.lock();
        bool::from(reg.master.api_key.as_bytes().ct_eq(given))
    }

    fn persist_interval(&self) -> std::time::Duration {
        self.settings.tunables.report_interval
    }

    /// Flushes staged writes; on failure the caller's records stay dirty.
    async fn flush(&self) -> Result<(), StateError> {
        self.store
            .flush()
            .await
            .map_err(|e| save_error(e, self.persist_interval()))
    }

    fn stage_entry(&self, e: &mut Entry) -> Result<(), StateError> {
        match self.store.put_instance(&e.stored()) {
            Ok(()) => {
                e.dirty = false;
                Ok(())
            }
            Err(err) => {
                e.dirty = true;
                Err(save_error(err, self.persist_interval()))
            }
        }
    }

    fn stage_master(&self, reg: &mut Registry) -> Result<(), StateError> {
        match self.store.put_master(&reg.master) {
            Ok(()) => {
                reg.master_dirty = false;
                Ok(())
            }
            Err(err) => {
                reg.master_dirty = true;
                Err(save_error(err, self.persist_interval()))
            }
        }
    }

    /// GET /instances as JSON bytes (the key record first).
    pub fn list_json(&self) -> Vec<u8> {
        let reg = self.lock();
        let mut out = Vec::with_capacity(600 * (reg.instances.len() + 1));
        out.push(b'[');
        crate::gojson::write(&mut out, &key_instance(&reg.master));
        for e in reg.instances.values() {
            out.push(b',');
            crate::gojson::write(&mut out, &e.inst);
        }
        out.push(b']');
        out
    }

    /// Every instance, the key record first (SSE initial events, backups).
    pub fn all_instances(&self) -> Vec<Instance> {
        let reg = self.lock();
        let mut v = Vec::with_capacity(reg.instances.len() + 1);
        v.push(key_instance(&reg.master));
        v.extend(reg.instances.values().map(|e| e.inst.clone()));
        v
    }

    pub fn get(&self, target: Target<'_>) -> Result<Instance, StateError> {
        let reg = self.lock();
        let id = match target {
            Target::ApiKey => return Ok(key_instance(&reg.master)),
            Target::Instance(id) => id,
        };
        reg.instances
            .get(id)
            .map(|e| e.inst.clone())
            .ok_or(StateError::NotFound)
    }

    /// Registers a new instance (`restart: true`) and starts it.
    pub async fn create(&self, alias: String, url: InstanceUrl) -> Result<Instance, StateError> {
        let (inst, staged) = {
            let mut reg = self.lock();
            let id = loop {
                let id = hex::encode(rand::random::<[u8; 4]>());
                if !reg.instances.contains_key(&id) {
                    break id;
                }
            };
            let inst = Instance {
                id: id.clone(),
                alias,
                kind: url.kind,
                status: InstanceStatus::Stopped,
                url: url.url,
                config: url.config,
                restart: true,
                ..Instance::default()
            };
            let ctl = self.supervise(&id);
            let mut entry = Entry {
                inst: inst.clone(),
                pid: None,
                traffic: TrafficCounters::default(),
                worker: WorkerFacts::default(),
                dirty: true,
                ctl: ctl.clone(),
            };
            let staged = self.stage_entry(&mut entry);
            reg.instances.insert(id, entry);
            self.events.publish(EventKind::Create, Some(&inst), "");
            // A new task's queue is empty.
            command(
                &ctl,
                Command::Start {
                    url: inst.url.clone(),
                    restart: inst.restart,
                },
            )?;
            (inst, staged)
        };
        tracing::info!("Instance created: {} [{}]", inst.url, inst.id);
        staged?;
        self.flush().await?;
        Ok(inst)
    }

    /// Applies a validated PATCH: alias, action, restart and meta in the reference's order.
    pub async fn patch(&self, id: &str, patch: InstancePatch) -> Result<Instance, StateError> {
        let (inst, staged) = {
            let mut reg = self.lock();
            let e = reg.instances.get_mut(id).ok_or(StateError::NotFound)?;
            // The commands this PATCH queues (a run-state action, a new restart policy):
            // refuse it whole, before anything changes, when they would not fit.
            let commands = usize::from(matches!(
                patch.action,
                Some(Action::Start | Action::Stop | Action::Restart)
            )) + usize::from(patch.restart.is_some_and(|r| r != e.inst.restart));
            if e.ctl.capacity() < commands {
                return Err(StateError::Busy);
            }
            let mut changed = false;
            if let Some(alias) = patch.alias.filter(|a| *a != e.inst.alias) {
                tracing::info!("Alias updated: {} [{}]", alias, id);
                e.inst.alias = alias;
                changed = true;
                self.events.publish(EventKind::Update, Some(&e.inst), "");
            }
            match patch.action {
                None => {}
                Some(Action::Start) => command(
                    &e.ctl,
                    Command::Start {
                        url: e.inst.url.clone(),
                        restart: e.inst.restart,
                    },
                )?,
                Some(Action::Stop) => command(&e.ctl, Command::Stop(None))?,
                Some(Action::Restart) => command(
                    &e.ctl,
                    Command::Restart {
                        url: e.inst.url.clone(),
                        restart: e.inst.restart,
                    },
                )?,
                Some(Action::Reset) => {
                    e.traffic.reset();
                    [e.inst.tcprx, e.inst.tcptx, e.inst.udprx, e.inst.udptx] = [0; 4];
                    changed = true;
                    tracing::info!("Traffic stats reset: 0 [{}]", id);
                    self.events.publish(EventKind::Update, Some(&e.inst), "");
                }
            }
            if let Some(restart) = patch.restart.filter(|r| *r != e.inst.restart) {
                e.inst.restart = restart;
                command(&e.ctl, Command::RestartPolicy(restart))?;
                changed = true;
                tracing::info!("Restart policy updated: {} [{}]", restart, id);
                self.events.publish(EventKind::Update, Some(&e.inst), "");
            }
            if patch.meta_given {
                if let Some(peer) = patch.peer {
                    e.inst.meta.peer = peer;
                }
                if let Some(tags) = patch.tags {
                    e.inst.meta.tags = tags;
                }
                changed = true;
                tracing::info!("Meta updated [{}]", id);
                self.events.publish(EventKind::Update, Some(&e.inst), "");
            }
            let staged = if changed { self.stage_entry(e) } else { Ok(()) };
            (e.inst.clone(), staged.map(|_| changed))
        };
        if staged? {
            self.flush().await?;
        }
        Ok(inst)
    }

    /// A new API key (PATCH `********` with `restart`); every open event stream ends.
    pub async fn regenerate_key(&self) -> Result<Instance, StateError> {
        let (inst, staged) = {
            let mut reg = self.lock();
            reg.master.api_key = new_api_key();
            let staged = self.stage_master(&mut reg);
            let inst = key_instance(&reg.master);
            // Every open event stream was authorised with the old key: end them before
            // anything else is published, so none of them ever sees the new key. A stream
            // that checked the old key but subscribed after this `shutdown` notices the
            // change itself (api/events.rs checks the key again once subscribed).
            self.events.close_all();
            self.events.publish(EventKind::Update, Some(&inst), "");
            (inst, staged)
        };
        tracing::info!("API Key regenerated: {}", inst.url);
        staged?;
        self.flush().await?;
        Ok(inst)
    }

    /// PUT: replaces the URL and restarts the instance on it (an instance id: the API
    /// refuses the key record before it gets here).
    pub async fn put(&self, id: &str, url: InstanceUrl) -> Result<Instance, StateError> {
        // Stop the old worker first (waits for it), so the new one can take the ports.
        let (tx, rx) = oneshot::channel();
        {
            let reg = self.lock();
            let e = reg.instances.get(id).ok_or(StateError::NotFound)?;
            if url.url == e.inst.url {
                return Err(StateError::UrlUnchanged);
            }
            // The stop and the start after it.
            if e.ctl.capacity() < 2 {
                return Err(StateError::Busy);
            }
            command(&e.ctl, Command::Stop(Some(tx)))?;
        }
        let _ = rx.await;
        let (inst, staged) = {
            let mut reg = self.lock();
            let e = reg.instances.get_mut(id).ok_or(StateError::NotFound)?;
            e.inst.kind = url.kind;
            e.inst.url = url.url;
            e.inst.config = url.config;
            e.inst.status = InstanceStatus::Stopped;
            let staged = self.stage_entry(e);
            // Room was made sure of before the stop; another request that filled the queue
            // since then gets its own "busy", and this start is only logged as lost.
            if command(
                &e.ctl,
                Command::Start {
                    url: e.inst.url.clone(),
                    restart: e.inst.restart,
                },
            )
            .is_err()
            {
                tracing::warn!("Instance not started on its new URL: its command queue is full; start it again [{id}]");
            }
            (e.inst.clone(), staged)
        };
        tracing::info!("Instance URL updated: {} [{}]", inst.url, id);
        staged?;
        self.flush().await?;
        Ok(inst)
    }

    /// Stops and removes an instance (an instance id: the API refuses the key record
    /// before it gets here).
    pub async fn delete(&self, id: &str) -> Result<(), StateError> {
        let (tx, rx) = oneshot::channel();
        {
            let reg = self.lock();
            let e = reg.instances.get(id).ok_or(StateError::NotFound)?;
            command(&e.ctl, Command::Delete(tx))?;
        }
        let _ = rx.await;
        let last = self.lock().instances.remove(id).map(|e| e.inst);
        let Some(last) = last else {
            // Deleted concurrently by another request.
            return Err(StateError::NotFound);
        };
        let staged = self
            .store
            .remove_instance(id)
            .map_err(|e| save_error(e, self.persist_interval()));
        self.events.publish(EventKind::Delete, Some(&last), "");
        tracing::info!("Instance deleted [{}]", id);
        staged?;
        self.flush().await
    }

    /// Sets the master alias (already checked by the API).
    pub async fn set_alias(&self, alias: String) -> Result<(), StateError> {
        let staged = {
            let mut reg = self.lock();
            reg.master.alias = alias;
            self.stage_master(&mut reg)
        };
        staged?;
        self.flush().await
    }

    /// Asks instance `id` to start on its URL (autostart after a master start).
    pub fn start(&self, id: &str) {
        let reg = self.lock();
        if let Some(e) = reg.instances.get(id) {
            // Right after the task was made: its queue is empty.
            let _ = command(
                &e.ctl,
                Command::Start {
                    url: e.inst.url.clone(),
                    restart: e.inst.restart,
                },
            );
        }
    }

    pub fn master_record(&self) -> MasterRecord {
        self.lock().master.clone()
    }

    /// Saves every dirty record (counters moved, or an earlier write failed). After a write
    /// error the database is reopened and the whole state rewritten.
    pub async fn save_dirty(&self) -> anyhow::Result<()> {
        if self.store.is_broken() {
            let snap = self.snapshot();
            // Records stay marked dirty: the next round writes them again, which also
            // covers changes made while this one ran.
            return self.store.reopen_with(&snap).await;
        }
        let mut failed = None;
        {
            let mut reg = self.lock();
            if reg.master_dirty {
                if let Err(e) = self.store.put_master(&reg.master) {
                    failed = Some(e);
                } else {
                    reg.master_dirty = false;
                }
            }
            for e in reg.instances.values_mut().filter(|e| e.dirty) {
                match self.store.put_instance(&e.stored()) {
                    Ok(()) => e.dirty = false,
                    Err(err) => failed = Some(err),
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        self.store.flush().await
    }

    /// The whole state for `backup.json`.
    pub fn snapshot(&self) -> Snapshot {
        let reg = self.lock();
        Snapshot {
            master: Some(reg.master.clone()),
            instances: reg.instances.values().map(Entry::stored).collect(),
        }
    }

    /// Command senders of every instance (shutdown).
    pub fn controls(&self) -> Vec<(String, mpsc::Sender<Command>)> {
        self.lock()
            .instances
            .iter()
            .map(|(id, e)| (id.clone(), e.ctl.clone()))
            .collect()
    }

    /// Runs `change` on instance `id` under the lock and publishes an `update` if it says
    /// so; nothing happens for an instance deleted meanwhile.
    fn update(&self, id: &str, change: impl FnOnce(&mut Entry) -> bool) {
        let mut reg = self.lock();
        if let Some(e) = reg.instances.get_mut(id) {
            if change(e) {
                self.events.publish(EventKind::Update, Some(&e.inst), "");
            }
        }
    }
}

impl InstanceSink for Master {
    fn worker_spawned(&self, id: &str, pid: u32) {
        self.update(id, |e| {
            e.pid = Some(pid);
            let i = &e.inst;
            e.traffic
                .worker_started([i.tcprx, i.tcptx, i.udprx, i.udptx]);
            e.worker.started = Some(Instant::now());
            e.worker.spawns = e.worker.spawns.saturating_add(1);
            e.dirty = true;
            false
        });
    }

    fn worker_spawn_failed(&self, _id: &str) {
        self.spawn_failures.fetch_add(1, Ordering::Relaxed);
    }

    fn worker_exited(&self, id: &str, code: i32) {
        self.update(id, |e| {
            e.worker.started = None;
            e.worker.last_exit = Some(code);
            false
        });
    }

    fn worker_ready(&self, id: &str, mode: u8) {
        self.update(id, |e| {
            e.inst.status = InstanceStatus::Running;
            e.inst.mode = i32::from(mode);
            true
        });
    }

    fn worker_stats(&self, id: &str, s: &Stats) {
        self.update(id, |e| {
            let totals = e.traffic.apply([s.tcprx, s.tcptx, s.udprx, s.udptx]);
            let inst = &mut e.inst;
            inst.mode = i32::from(s.mode);
            inst.ping = clamp_i32(s.ping);
            inst.pool = clamp_i32(s.pool);
            inst.tcps = clamp_i32(s.tcps);
            inst.udps = clamp_i32(s.udps);
            [inst.tcprx, inst.tcptx, inst.udprx, inst.udptx] = totals;
            inst.status = InstanceStatus::Running;
            e.dirty = true;
            true
        });
    }

    fn worker_stopped(&self, id: &str) {
        self.update(id, |e| {
            if e.inst.status == InstanceStatus::Stopped {
                return false;
            }
            e.inst.status = InstanceStatus::Stopped;
            zero_gauges(&mut e.inst);
            e.dirty = true;
            true
        });
    }

    fn worker_failed(&self, id: &str) {
        self.update(id, |e| {
            e.inst.status = InstanceStatus::Error;
            zero_gauges(&mut e.inst);
            e.dirty = true;
            true
        });
    }

    fn worker_log(&self, id: &str, line: &str) {
        let reg = self.lock();
        if let Some(e) = reg.instances.get(id) {
            self.events.publish(EventKind::Log, Some(&e.inst), line);
        }
    }
}
