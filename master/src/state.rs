//! The master's in-memory state and every operation the API performs on it.
//!
//! One lock guards the registry (instances and the master record); it is never held across
//! an await. Each instance's child process belongs to its supervisor task
//! ([`crate::supervisor`]); the registry holds only a command sender for it. Every mutating
//! operation stages its writes in the store under the lock and flushes after releasing it,
//! before the API answers; a failed write answers 500, keeps the change in memory and marks
//! the record dirty so the periodic save retries it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::http::StatusCode;
use nodepass_proto::tunables::Tunables;
use nodepass_proto::url::{self, Inherited, MasterUrl, UrlError};
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::events::EventHub;
use crate::model::*;
use crate::store::{new_api_key, MasterRecord, Snapshot, Store, StoredInstance};
use crate::supervisor::{self, Command};

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

/// An API error: status and the `error` text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "Instance not found")
    }
    fn forbidden_key() -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden: API Key")
    }
}

/// Traffic accounting of one instance: totals = base + reported - offset, where `base` is
/// the total when the current worker started and `offset` the worker's figure at the last
/// reset (a worker's own counters only grow during its life).
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    pub base: [u64; 4],
    pub offset: [u64; 4],
    pub last: [u64; 4],
}

/// One registered instance.
pub struct Entry {
    pub inst: Instance,
    pub pid: Option<u32>,
    pub counters: Counters,
    /// Changed since last saved (counters, or a failed write).
    pub dirty: bool,
    pub ctl: mpsc::UnboundedSender<Command>,
}

impl Entry {
    fn stored(&self) -> StoredInstance {
        StoredInstance {
            instance: self.inst.clone(),
            pid: self.pid,
        }
    }
}

pub struct Registry {
    pub master: MasterRecord,
    pub instances: BTreeMap<String, Entry>,
    pub master_dirty: bool,
}

/// The master: settings, store, events and the registry.
pub struct Master {
    pub settings: Settings,
    pub store: Store,
    pub events: EventHub,
    pub started: Instant,
    /// At most 10 TCP probes at once, as the reference.
    pub tcping_slots: Semaphore,
    registry: Mutex<Registry>,
}

/// The API key record rendered as an instance.
pub fn key_instance(m: &MasterRecord) -> Instance {
    Instance {
        id: API_KEY_ID.to_string(),
        alias: m.alias.clone(),
        kind: String::new(),
        status: String::new(),
        url: m.api_key.clone(),
        config: m.mid.clone(),
        restart: false,
        ..Instance::default()
    }
}

/// Parses an instance URL and renders its stored `url` and `config` (REFERENCE 9.3), or the
/// API's error for it.
fn instance_url(raw: &str, inherited: &Inherited) -> Result<(String, String, String), ApiError> {
    if raw.len() > MAX_URL_LEN {
        return Err(ApiError::bad(format!(
            "Invalid URL format: the URL is longer than {MAX_URL_LEN} bytes"
        )));
    }
    go_url_checks(raw)?;
    let mut t = match url::parse_tunnel_url(raw) {
        Ok(t) => t,
        Err(UrlError::Syntax(_)) => return Err(ApiError::bad("Invalid URL format")),
        Err(UrlError::Scheme(_)) => return Err(ApiError::bad("Invalid URL scheme")),
        Err(e) => return Err(ApiError::bad(format!("Invalid URL format: {e}"))),
    };
    t.inherit(inherited);
    Ok((t.role.as_str().to_string(), t.to_url(), t.to_config()))
}

/// The two errors the reference gives before looking at an instance URL's meaning, in its
/// order: Go's `url.Parse` failing (`Invalid URL format`: control characters, spaces, a
/// missing scheme before `:`) and a scheme other than client/server (`Invalid URL scheme`,
/// also for text without any scheme at all).
fn go_url_checks(raw: &str) -> Result<(), ApiError> {
    let unparsable = raw.starts_with(':') || raw.chars().any(|c| c.is_control() || c == ' ');
    let scheme = match raw.split_once(':') {
        Some((s, _))
            if s.starts_with(|c: char| c.is_ascii_alphabetic())
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')) =>
        {
            s.to_ascii_lowercase()
        }
        _ => String::new(),
    };
    if unparsable {
        return Err(ApiError::bad("Invalid URL format"));
    }
    if scheme != "client" && scheme != "server" {
        return Err(ApiError::bad("Invalid URL scheme"));
    }
    Ok(())
}

/// Decodes the first JSON value of a body as Go's `json.Decoder` does (trailing bytes are
/// ignored).
pub fn decode_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Option<T> {
    serde_json::Deserializer::from_slice(body)
        .into_iter::<T>()
        .next()
        .and_then(Result::ok)
}

fn save_error(e: anyhow::Error, every: std::time::Duration) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!(
            "Failed to save state: {e:#}. The change is kept in memory and saving is retried every {}s",
            every.as_secs().max(1)
        ),
    )
}

impl Master {
    /// Builds the master from what the store held. Returns it with the ids to start.
    pub fn new(settings: Settings, store: Store, snapshot: Snapshot) -> (Arc<Self>, Vec<String>) {
        let (master, fresh_key) = match snapshot.master {
            Some(m) => (m, false),
            None => (MasterRecord::generate(), true),
        };
        let master = Arc::new(Master {
            settings,
            store,
            events: EventHub::new(),
            started: Instant::now(),
            tcping_slots: Semaphore::new(10),
            registry: Mutex::new(Registry {
                master,
                instances: BTreeMap::new(),
                master_dirty: fresh_key,
            }),
        });
        let mut autostart = Vec::new();
        {
            let mut reg = master.lock();
            for rec in snapshot.instances {
                let mut inst = rec.instance;
                if inst.id == API_KEY_ID {
                    continue;
                }
                inst.status = Status::Stopped.as_str().to_string();
                inst.ping = 0;
                inst.pool = 0;
                inst.tcps = 0;
                inst.udps = 0;
                if inst.restart {
                    autostart.push(inst.id.clone());
                }
                let ctl = supervisor::spawn(Arc::downgrade(&master), inst.id.clone());
                reg.instances.insert(
                    inst.id.clone(),
                    Entry {
                        inst,
                        pid: rec.pid,
                        counters: Counters::default(),
                        dirty: false,
                        ctl,
                    },
                );
            }
        }
        (master, autostart)
    }

    pub fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn api_key(&self) -> String {
        self.lock().master.api_key.clone()
    }

    /// Checks an `X-API-Key` header value in constant time.
    pub fn check_key(&self, given: Option<&[u8]>) -> Result<(), ApiError> {
        let Some(given) = given.filter(|g| !g.is_empty()) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "Unauthorized: API key required",
            ));
        };
        let reg = self.lock();
        if bool::from(reg.master.api_key.as_bytes().ct_eq(given)) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "Unauthorized: Invalid API key",
            ))
        }
    }

    fn persist_interval(&self) -> std::time::Duration {
        self.settings.tunables.report_interval
    }

    /// Flushes staged writes; on failure the caller's records stay dirty.
    async fn flush(&self) -> Result<(), ApiError> {
        self.store
            .flush()
            .await
            .map_err(|e| save_error(e, self.persist_interval()))
    }

    fn stage_entry(&self, e: &mut Entry) -> Result<(), ApiError> {
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

    fn stage_master(&self, reg: &mut Registry) -> Result<(), ApiError> {
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

    pub fn get(&self, id: &str) -> Result<Instance, ApiError> {
        let reg = self.lock();
        if id == API_KEY_ID {
            return Ok(key_instance(&reg.master));
        }
        reg.instances
            .get(id)
            .map(|e| e.inst.clone())
            .ok_or_else(ApiError::not_found)
    }

    /// POST /instances.
    pub async fn create(self: &Arc<Self>, body: &[u8]) -> Result<Instance, ApiError> {
        let req: CreateInstanceRequest = decode_body(body)
            .filter(|r: &CreateInstanceRequest| !r.url.is_empty())
            .ok_or_else(|| ApiError::bad("Invalid request body"))?;
        let (kind, url, config) = instance_url(&req.url, &self.settings.inherited)?;
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
                alias: req.alias,
                kind,
                status: Status::Stopped.as_str().to_string(),
                url,
                config,
                restart: true,
                ..Instance::default()
            };
            let ctl = supervisor::spawn(Arc::downgrade(self), id.clone());
            let mut entry = Entry {
                inst: inst.clone(),
                pid: None,
                counters: Counters::default(),
                dirty: true,
                ctl: ctl.clone(),
            };
            let staged = self.stage_entry(&mut entry);
            reg.instances.insert(id, entry);
            self.events.publish("create", Some(&inst), "");
            let _ = ctl.send(Command::Start);
            (inst, staged)
        };
        tracing::info!("Instance created: {} [{}]", inst.url, inst.id);
        staged?;
        self.flush().await?;
        Ok(inst)
    }

    /// PATCH /instances/{id}: validates the whole request first, then applies alias, action,
    /// restart and meta in the reference's order.
    pub async fn patch(self: &Arc<Self>, id: &str, body: &[u8]) -> Result<Instance, ApiError> {
        if id != API_KEY_ID && !self.lock().instances.contains_key(id) {
            return Err(ApiError::not_found());
        }
        // An undecodable body changes nothing and answers the instance (as the reference).
        let Some(req) = decode_body::<PatchInstanceRequest>(body) else {
            return self.get(id);
        };
        if id == API_KEY_ID {
            return self.patch_key(&req).await;
        }
        validate_patch(&req)?;
        let (inst, staged) = {
            let mut reg = self.lock();
            let e = reg.instances.get_mut(id).ok_or_else(ApiError::not_found)?;
            let mut changed = false;
            if !req.alias.is_empty() && req.alias != e.inst.alias {
                e.inst.alias = req.alias.clone();
                changed = true;
                tracing::info!("Alias updated: {} [{}]", req.alias, id);
                self.events.publish("update", Some(&e.inst), "");
            }
            match req.action.as_str() {
                "" => {}
                "start" => {
                    let _ = e.ctl.send(Command::Start);
                }
                "stop" => {
                    let _ = e.ctl.send(Command::Stop(None));
                }
                "restart" => {
                    let _ = e.ctl.send(Command::Restart);
                }
                "reset" => {
                    let c = &mut e.counters;
                    c.offset = c.last;
                    c.base = [0; 4];
                    e.inst.tcprx = 0;
                    e.inst.tcptx = 0;
                    e.inst.udprx = 0;
                    e.inst.udptx = 0;
                    changed = true;
                    tracing::info!("Traffic stats reset: 0 [{}]", id);
                    self.events.publish("update", Some(&e.inst), "");
                }
                // validate_patch refused every other action.
                _ => {}
            }
            if let Some(restart) = req.restart {
                if restart != e.inst.restart {
                    e.inst.restart = restart;
                    changed = true;
                    tracing::info!("Restart policy updated: {} [{}]", restart, id);
                    self.events.publish("update", Some(&e.inst), "");
                }
            }
            if let Some(meta) = &req.meta {
                if let Some(peer) = &meta.peer {
                    // An empty peer object keeps the current peer (the API document's rule).
                    if !peer.is_empty() {
                        e.inst.meta.peer = peer.clone();
                    }
                }
                if let Some(tags) = &meta.tags {
                    e.inst.meta.tags = tags.0.iter().cloned().collect();
                }
                changed = true;
                tracing::info!("Meta updated [{}]", id);
                self.events.publish("update", Some(&e.inst), "");
            }
            let staged = if changed { self.stage_entry(e) } else { Ok(()) };
            (e.inst.clone(), staged.map(|_| changed))
        };
        if staged? {
            self.flush().await?;
        }
        Ok(inst)
    }

    async fn patch_key(&self, req: &PatchInstanceRequest) -> Result<Instance, ApiError> {
        if req.action != "restart" {
            return self.get(API_KEY_ID);
        }
        let (inst, staged) = {
            let mut reg = self.lock();
            reg.master.api_key = new_api_key();
            let staged = self.stage_master(&mut reg);
            let inst = key_instance(&reg.master);
            self.events.publish("update", Some(&inst), "");
            (inst, staged)
        };
        tracing::info!("API Key regenerated: {}", inst.url);
        // Every open event stream was authorised with the old key: end them.
        self.events.close_all();
        staged?;
        self.flush().await?;
        Ok(inst)
    }

    /// PUT /instances/{id}.
    pub async fn put(self: &Arc<Self>, id: &str, body: &[u8]) -> Result<Instance, ApiError> {
        if id == API_KEY_ID {
            return Err(ApiError::forbidden_key());
        }
        let current = self.get(id)?;
        let req: PutInstanceRequest = decode_body(body)
            .filter(|r: &PutInstanceRequest| !r.url.is_empty())
            .ok_or_else(|| ApiError::bad("Invalid request body"))?;
        let (kind, url, config) = instance_url(&req.url, &self.settings.inherited)?;
        if url == current.url {
            return Err(ApiError::new(StatusCode::CONFLICT, "Instance URL conflict"));
        }
        // Stop the old worker first (waits for it), so the new one can take the ports.
        let ctl = self.lock().instances.get(id).map(|e| e.ctl.clone());
        let Some(ctl) = ctl else {
            return Err(ApiError::not_found());
        };
        let (tx, rx) = oneshot::channel();
        if ctl.send(Command::Stop(Some(tx))).is_ok() {
            let _ = rx.await;
        }
        let (inst, staged) = {
            let mut reg = self.lock();
            let e = reg.instances.get_mut(id).ok_or_else(ApiError::not_found)?;
            e.inst.kind = kind;
            e.inst.url = url;
            e.inst.config = config;
            e.inst.status = Status::Stopped.as_str().to_string();
            let staged = self.stage_entry(e);
            let _ = e.ctl.send(Command::Start);
            (e.inst.clone(), staged)
        };
        tracing::info!("Instance URL updated: {} [{}]", inst.url, id);
        staged?;
        self.flush().await?;
        Ok(inst)
    }

    /// DELETE /instances/{id}.
    pub async fn delete(&self, id: &str) -> Result<(), ApiError> {
        if id == API_KEY_ID {
            return Err(ApiError::forbidden_key());
        }
        let ctl = self
            .lock()
            .instances
            .get(id)
            .map(|e| e.ctl.clone())
            .ok_or_else(ApiError::not_found)?;
        let (tx, rx) = oneshot::channel();
        if ctl.send(Command::Delete(tx)).is_ok() {
            let _ = rx.await;
        }
        let last = self.lock().instances.remove(id).map(|e| e.inst);
        let Some(last) = last else {
            // Deleted concurrently by another request.
            return Err(ApiError::not_found());
        };
        let staged = self
            .store
            .remove_instance(id)
            .map_err(|e| save_error(e, self.persist_interval()));
        self.events.publish("delete", Some(&last), "");
        tracing::info!("Instance deleted [{}]", id);
        staged?;
        self.flush().await
    }

    /// The master alias (POST /info).
    pub async fn set_alias(&self, body: &[u8]) -> Result<(), ApiError> {
        let req: MasterAliasRequest =
            decode_body(body).ok_or_else(|| ApiError::bad("Invalid request body"))?;
        if req.alias.len() > MAX_VALUE_LEN {
            return Err(ApiError::bad(format!(
                "Master alias exceeds maximum length {MAX_VALUE_LEN}"
            )));
        }
        let staged = {
            let mut reg = self.lock();
            reg.master.alias = req.alias;
            self.stage_master(&mut reg)
        };
        staged?;
        self.flush().await
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

    /// Command senders of every instance (shutdown, autostart).
    pub fn controls(&self) -> Vec<(String, mpsc::UnboundedSender<Command>)> {
        self.lock()
            .instances
            .iter()
            .map(|(id, e)| (id.clone(), e.ctl.clone()))
            .collect()
    }
}

fn check_len(value: &str, what: &str) -> Result<(), ApiError> {
    if value.len() > MAX_VALUE_LEN {
        Err(ApiError::bad(format!(
            "{what} exceeds maximum length {MAX_VALUE_LEN}"
        )))
    } else {
        Ok(())
    }
}

/// Every check of a PATCH body, before anything is applied.
fn validate_patch(req: &PatchInstanceRequest) -> Result<(), ApiError> {
    check_len(&req.alias, "Instance alias")?;
    match req.action.as_str() {
        "" | "start" | "stop" | "restart" | "reset" => {}
        other => return Err(ApiError::bad(format!("Invalid action: {other}"))),
    }
    if let Some(meta) = &req.meta {
        if let Some(peer) = &meta.peer {
            check_len(&peer.sid, "Meta peer.sid")?;
            check_len(&peer.kind, "Meta peer.type")?;
            check_len(&peer.alias, "Meta peer.alias")?;
            if !peer.sid.is_empty()
                && uuid::Uuid::parse_str(&peer.sid)
                    .map(|u| u.get_version_num() != 4)
                    .unwrap_or(true)
            {
                return Err(ApiError::bad(format!(
                    "Meta peer.sid must be a UUID v4 (e.g. 550e8400-e29b-41d4-a716-446655440000), got {:?}",
                    peer.sid
                )));
            }
            if !matches!(peer.kind.as_str(), "" | "0" | "1" | "2") {
                return Err(ApiError::bad(format!(
                    "Meta peer.type must be \"0\", \"1\" or \"2\", got {:?}",
                    peer.kind
                )));
            }
        }
        if let Some(tags) = &meta.tags {
            if tags.0.len() > MAX_TAGS {
                return Err(ApiError::bad(format!(
                    "Meta tags exceed maximum count {MAX_TAGS}"
                )));
            }
            let mut seen = std::collections::HashSet::new();
            for (k, v) in &tags.0 {
                check_len(k, "Meta tag key")?;
                check_len(v, "Meta tag value")?;
                if !seen.insert(k.as_str()) {
                    return Err(ApiError::bad(format!("Duplicate meta tag key: {k}")));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patch(body: &str) -> Result<(), ApiError> {
        validate_patch(&serde_json::from_str(body).unwrap())
    }

    #[test]
    fn meta_validation() {
        assert!(patch(r#"{"meta":{"peer":{"sid":"550e8400-e29b-41d4-a716-446655440000","type":"2","alias":"x"}}}"#).is_ok());
        let e = patch(r#"{"meta":{"peer":{"sid":"svc-1"}}}"#).unwrap_err();
        assert!(
            e.message.starts_with("Meta peer.sid must be a UUID v4"),
            "{e:?}"
        );
        // A v1 UUID is not a v4 one.
        assert!(
            patch(r#"{"meta":{"peer":{"sid":"c232ab00-9414-11ec-b3c8-9f6bdeced846"}}}"#).is_err()
        );
        let e = patch(r#"{"meta":{"peer":{"type":"3"}}}"#).unwrap_err();
        assert!(e.message.starts_with("Meta peer.type must be"), "{e:?}");
        let long = "s".repeat(257);
        let e = patch(&format!(r#"{{"meta":{{"peer":{{"sid":"{long}"}}}}}}"#)).unwrap_err();
        assert_eq!(e.message, "Meta peer.sid exceeds maximum length 256");
        let e = patch(&format!(r#"{{"meta":{{"tags":{{"{long}":"v"}}}}}}"#)).unwrap_err();
        assert_eq!(e.message, "Meta tag key exceeds maximum length 256");
        let e = patch(&format!(r#"{{"meta":{{"tags":{{"k":"{long}"}}}}}}"#)).unwrap_err();
        assert_eq!(e.message, "Meta tag value exceeds maximum length 256");
        let many: Vec<String> = (0..=MAX_TAGS).map(|i| format!(r#""k{i}":"v""#)).collect();
        let e = patch(&format!(r#"{{"meta":{{"tags":{{{}}}}}}}"#, many.join(","))).unwrap_err();
        assert_eq!(e.message, "Meta tags exceed maximum count 100");
        let e = patch(r#"{"meta":{"tags":{"env":"a","env":"b"}}}"#).unwrap_err();
        assert_eq!(e.message, "Duplicate meta tag key: env");
        let e = patch(r#"{"action":"jump"}"#).unwrap_err();
        assert_eq!(e.message, "Invalid action: jump");
        let e = patch(&format!(r#"{{"alias":"{long}"}}"#)).unwrap_err();
        assert_eq!(e.message, "Instance alias exceeds maximum length 256");
    }

    #[test]
    fn url_errors_read_like_the_reference() {
        let inh = Inherited::default();
        assert_eq!(
            instance_url("::not a url", &inh).unwrap_err().message,
            "Invalid URL format"
        );
        assert_eq!(
            instance_url("http://127.0.0.1:1/127.0.0.1:2", &inh)
                .unwrap_err()
                .message,
            "Invalid URL scheme"
        );
        // Without any scheme Go's parser accepts the text and the scheme check refuses it.
        assert_eq!(
            instance_url("server//x", &inh).unwrap_err().message,
            "Invalid URL scheme"
        );
        assert_eq!(
            instance_url("client://a b/c:1", &inh).unwrap_err().message,
            "Invalid URL format"
        );
        let e = instance_url("client://127.0.0.1:1/127.0.0.1:2?min=abc", &inh).unwrap_err();
        assert!(e.message.starts_with("Invalid URL format: "), "{e:?}");
        let (kind, url, config) =
            instance_url("client://127.0.0.1:42110/127.0.0.1:41001?log=info", &inh).unwrap();
        assert_eq!(kind, "client");
        assert_eq!(url, "client://127.0.0.1:42110/127.0.0.1:41001?log=info");
        assert_eq!(config, "client://127.0.0.1:42110/127.0.0.1:41001?block=0&dial=auto&dns=5m0s&log=info&min=64&mode=0&notcp=0&noudp=0&proxy=0&rate=0&read=0s&slot=65536&sni=none");
    }
}
