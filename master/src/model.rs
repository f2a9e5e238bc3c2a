//! The values the API speaks: the instance object (field order and types exactly as the
//! reference master writes them), its metadata, SSE events, /info and /tcping answers, and the
//! request bodies. utoipa derives the OpenAPI schemas from these same types, so the document
//! we serve cannot drift from what the handlers do.

use std::collections::BTreeMap;

use nodepass_proto::url::Role;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

/// Id of the special record that carries the API key (`url`), the master id (`config`) and
/// the master alias (`alias`).
pub const API_KEY_ID: &str = "********";

/// What an `{id}` in a path (or a stored record's id) names, decided once at the edge:
/// the key record `********` or an instance. Handlers match on it, so the key record's
/// rules (read-only but for `restart`, which regenerates the key) live in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// The record carrying the API key, the master id and the master alias.
    ApiKey,
    /// An instance id (8 hex characters; not checked here: an unknown one is a 404).
    Instance(&'a str),
}

impl<'a> Target<'a> {
    pub fn parse(id: &'a str) -> Self {
        if id == API_KEY_ID {
            Target::ApiKey
        } else {
            Target::Instance(id)
        }
    }
}

/// Longest alias, peer field, tag key or tag value accepted, in bytes (as the reference).
pub const MAX_VALUE_LEN: usize = 256;

/// Most tags an instance may carry. Not a reference rule: it keeps one SSE `data:` line
/// (the whole instance) under the 64 KiB a dashboard's line reader accepts.
pub const MAX_TAGS: usize = 100;

/// Longest instance URL accepted (same reason as [`MAX_TAGS`]).
pub const MAX_URL_LEN: usize = 4096;

/// Run state of an instance as the API shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InstanceStatus {
    Running,
    Stopped,
    Error,
    /// The API key record has no run state: `""`.
    #[default]
    #[serde(rename = "")]
    NotApplicable,
}

/// What an instance runs, from its URL scheme.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InstanceKind {
    Server,
    Client,
    /// The API key record runs nothing: `""`.
    #[default]
    #[serde(rename = "")]
    NotApplicable,
}

impl From<Role> for InstanceKind {
    fn from(role: Role) -> Self {
        match role {
            Role::Server => InstanceKind::Server,
            Role::Client => InstanceKind::Client,
        }
    }
}

/// The `type` of an SSE event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// One per instance when a stream opens.
    Initial,
    Create,
    Update,
    Delete,
    Log,
    /// The stream ends (master stopping, API key regenerated).
    Shutdown,
}

/// What PATCH `action` asks of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Restart,
    /// Zero the traffic totals.
    Reset,
}

impl Action {
    /// The action named by a PATCH body, or None for a name the API does not know.
    pub fn parse(name: &str) -> Option<Action> {
        match name {
            "start" => Some(Action::Start),
            "stop" => Some(Action::Stop),
            "restart" => Some(Action::Restart),
            "reset" => Some(Action::Reset),
            _ => None,
        }
    }
}

/// The remote end an instance is paired with (free-form for dashboards).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct Peer {
    /// Service id of the remote service: a UUID v4 (or empty).
    #[serde(deserialize_with = "null_is_empty")]
    pub sid: String,
    /// Remote service type.
    #[serde(rename = "type")]
    pub kind: PeerKind,
    /// Alias of the remote service.
    #[serde(deserialize_with = "null_is_empty")]
    pub alias: String,
}

impl Peer {
    pub fn is_empty(&self) -> bool {
        self.sid.is_empty() && self.kind == PeerKind::None && self.alias.is_empty()
    }
}

/// What kind of service a peer is, in JSON the strings the reference uses: `"0"` single-end
/// forwarding, `"1"` NAT traversal, `"2"` tunnel forwarding, `""` not given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum PeerKind {
    #[default]
    #[serde(rename = "")]
    None,
    #[serde(rename = "0")]
    SingleEnd,
    #[serde(rename = "1")]
    NatTraversal,
    #[serde(rename = "2")]
    TunnelForwarding,
}

impl PeerKind {
    /// The kind a JSON string names; None for any other string.
    pub fn parse(s: &str) -> Option<PeerKind> {
        Some(match s {
            "" => PeerKind::None,
            "0" => PeerKind::SingleEnd,
            "1" => PeerKind::NatTraversal,
            "2" => PeerKind::TunnelForwarding,
            _ => return None,
        })
    }
}

/// The peer of a PATCH body as sent: strings, checked by the API into a [`Peer`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct PeerRequest {
    /// A UUID v4, or empty.
    #[serde(deserialize_with = "null_is_empty")]
    pub sid: String,
    /// `"0"`, `"1"`, `"2"` or empty.
    #[serde(rename = "type")]
    #[serde(deserialize_with = "null_is_empty")]
    pub kind: String,
    #[serde(deserialize_with = "null_is_empty")]
    pub alias: String,
}

/// Instance metadata. `tags` is always an object (never null): dashboards read it unchecked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct Meta {
    pub peer: Peer,
    pub tags: BTreeMap<String, String>,
}

/// One instance as the API shows it; field order is the reference's. `Default` is an empty
/// record with zeroed figures, so constructors name only what they set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Instance {
    /// 8 lowercase hex characters, or `********` for the API key record.
    pub id: String,
    pub alias: String,
    /// `server` or `client` (empty for the API key record).
    #[serde(rename = "type")]
    pub kind: InstanceKind,
    /// `running`, `stopped` or `error` (empty for the API key record).
    pub status: InstanceStatus,
    /// The instance URL as stored and run (the API key for the key record).
    pub url: String,
    /// The canonical URL with every parameter filled in (the master id for the key record).
    pub config: String,
    /// Whether the instance starts with the master and is restarted after a crash.
    pub restart: bool,
    pub meta: Meta,
    /// Resolved mode reported by the worker (1 or 2; 0 before the first report).
    pub mode: i32,
    /// Control-channel round trip (single-end: target connect time), ms.
    pub ping: i32,
    /// Idle pool connections.
    pub pool: i32,
    /// Current TCP connections.
    pub tcps: i32,
    /// Current UDP sessions.
    pub udps: i32,
    /// Total bytes, surviving restarts until a `reset`.
    pub tcprx: u64,
    pub tcptx: u64,
    pub udprx: u64,
    pub udptx: u64,
}

/// One SSE event's `data`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InstanceEvent<'a> {
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// RFC 3339 with nanoseconds, local offset.
    pub time: String,
    /// The instance after the change; null for shutdown.
    pub instance: Option<&'a Instance>,
    /// The log line for `log` events (reference text form), else empty.
    pub logs: &'a str,
}

/// `{"error": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

/// Reads a string field where `null` means absent, as Go's decoder treats it.
fn null_is_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

/// POST /instances body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct CreateInstanceRequest {
    #[serde(deserialize_with = "null_is_empty")]
    pub alias: String,
    /// `server://...` or `client://...`. Give tunnel URLs a key (`server://SECRET@...`):
    /// without one the key is derived from the tunnel port and anyone can compute it (the
    /// instance logs a warning saying so).
    #[schema(required = true, min_length = 1)]
    #[serde(deserialize_with = "null_is_empty")]
    pub url: String,
}

/// PUT /instances/{id} body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct PutInstanceRequest {
    /// The new `server://...` or `client://...` URL.
    #[schema(required = true, min_length = 1)]
    #[serde(deserialize_with = "null_is_empty")]
    pub url: String,
}

/// Tag pairs exactly as they appear in a request body, duplicates included (a JSON map
/// would silently keep the last one, and a repeated key is a client mistake we report).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagList(pub Vec<(String, String)>);

impl Serialize for TagList {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for TagList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TagList;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of string tags")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TagList, A::Error> {
                let mut pairs = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, String>()? {
                    pairs.push((k, v));
                }
                Ok(TagList(pairs))
            }
        }
        d.deserialize_map(V)
    }
}

/// The `meta` part of a PATCH body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct MetaPatch {
    /// Replaces the peer; an empty object keeps the current one.
    pub peer: Option<PeerRequest>,
    /// Replaces all tags; `{}` clears them. A key given twice is rejected.
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    pub tags: Option<TagList>,
}

/// PATCH /instances/{id} body; every field optional, applied in this order.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct PatchInstanceRequest {
    /// New alias (an empty string leaves it unchanged).
    #[serde(deserialize_with = "null_is_empty")]
    pub alias: String,
    /// start, stop, restart or reset (reset zeroes the traffic counters). On `********`,
    /// restart regenerates the API key.
    #[serde(deserialize_with = "null_is_empty")]
    pub action: String,
    /// New restart policy.
    pub restart: Option<bool>,
    pub meta: Option<MetaPatch>,
}

/// A PATCH body after validation: what to change, in the order it is applied.
#[derive(Debug, Clone, Default)]
pub struct InstancePatch {
    /// A new alias (never empty: an empty alias in the body leaves it unchanged).
    pub alias: Option<String>,
    pub action: Option<Action>,
    pub restart: Option<bool>,
    /// A new peer; None keeps the current one (also for an empty peer object).
    pub peer: Option<Peer>,
    /// New tags, replacing all; None keeps them.
    pub tags: Option<BTreeMap<String, String>>,
    /// A `meta` object was given (even `{}`): the change is logged and published.
    pub meta_given: bool,
}

/// An instance URL as the master stores it: its kind, the URL as given (with inherited
/// parameters) and the canonical config (REFERENCE 9.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceUrl {
    pub kind: InstanceKind,
    pub url: String,
    pub config: String,
}

/// POST /info body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct MasterAliasRequest {
    #[serde(deserialize_with = "null_is_empty")]
    pub alias: String,
}

/// GET /info answer; keys in alphabetical order as the reference writes them.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MasterInfo {
    pub alias: String,
    /// Go's name for the CPU architecture (amd64, arm64, ...).
    pub arch: String,
    /// Our own build (`nodepass <version>`); `ver` is the API version we implement.
    pub build: String,
    /// CPU busy percent over 100 ms, -1 where unavailable.
    pub cpu: i32,
    pub crt: String,
    pub diskr: u64,
    pub diskw: u64,
    pub key: String,
    pub log: String,
    pub mem_total: u64,
    pub mem_used: u64,
    /// Master id (16 hex characters).
    pub mid: String,
    /// Host name of the master URL.
    pub name: String,
    pub netrx: u64,
    pub nettx: u64,
    /// Go's name for the OS (linux, darwin, ...).
    pub os: String,
    pub swap_total: u64,
    pub swap_used: u64,
    /// System uptime, seconds.
    pub sysup: u64,
    /// "0", "1" or "2".
    pub tls: String,
    /// Master uptime, seconds.
    pub uptime: u64,
    /// The NodePass API version this master implements (`v1.14.0`).
    pub ver: String,
}

/// GET /tcping answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TcpingResult {
    pub target: String,
    pub connected: bool,
    /// Connect time in whole milliseconds.
    pub latency: i64,
    /// Why it failed; null on success.
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_field_order_is_the_references() {
        let inst = Instance {
            id: "2bd44df0".into(),
            alias: "a".into(),
            kind: InstanceKind::Client,
            status: InstanceStatus::Running,
            url: "u".into(),
            config: "c".into(),
            restart: true,
            meta: Meta::default(),
            mode: 1,
            ping: 0,
            pool: 0,
            tcps: 0,
            udps: 1,
            tcprx: 1,
            tcptx: 2,
            udprx: 3,
            udptx: 4,
        };
        assert_eq!(
            String::from_utf8(crate::gojson::to_vec(&inst)).unwrap(),
            r#"{"id":"2bd44df0","alias":"a","type":"client","status":"running","url":"u","config":"c","restart":true,"meta":{"peer":{"sid":"","type":"","alias":""},"tags":{}},"mode":1,"ping":0,"pool":0,"tcps":0,"udps":1,"tcprx":1,"tcptx":2,"udprx":3,"udptx":4}"#
        );
    }

    #[test]
    fn tag_list_keeps_duplicates() {
        let p: PatchInstanceRequest =
            serde_json::from_str(r#"{"meta":{"tags":{"a":"1","a":"2"}}}"#).unwrap();
        let tags = p.meta.unwrap().tags.unwrap();
        assert_eq!(tags.0.len(), 2);
        let none: PatchInstanceRequest = serde_json::from_str(r#"{"meta":{"tags":null}}"#).unwrap();
        assert!(none.meta.unwrap().tags.is_none());
    }
}
