//! The values the API speaks: the instance object (field order and types exactly as the
//! reference master writes them), its metadata, SSE events, /info and /tcping answers, and the
//! request bodies. utoipa derives the OpenAPI schemas from these same types, so the document
//! we serve cannot drift from what the handlers do.

use std::collections::BTreeMap;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

/// Id of the special record that carries the API key (`url`), the master id (`config`) and
/// the master alias (`alias`).
pub const API_KEY_ID: &str = "********";

/// Longest alias, peer field, tag key or tag value accepted, in bytes (as the reference).
pub const MAX_VALUE_LEN: usize = 256;

/// Most tags an instance may carry. Not a reference rule: it keeps one SSE `data:` line
/// (the whole instance) under the 64 KiB a dashboard's line reader accepts.
pub const MAX_TAGS: usize = 100;

/// Longest instance URL accepted (same reason as [`MAX_TAGS`]).
pub const MAX_URL_LEN: usize = 4096;

/// Run state of an instance as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    Stopped,
    Error,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Stopped => "stopped",
            Status::Error => "error",
        }
    }
}

/// The remote end an instance is paired with (free-form for dashboards).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct Peer {
    /// Service id of the remote service: a UUID v4 (or empty).
    pub sid: String,
    /// Remote service type: "0" single-end forwarding, "1" NAT traversal, "2" tunnel
    /// forwarding (or empty).
    #[serde(rename = "type")]
    pub kind: String,
    /// Alias of the remote service.
    pub alias: String,
}

impl Peer {
    pub fn is_empty(&self) -> bool {
        self.sid.is_empty() && self.kind.is_empty() && self.alias.is_empty()
    }
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
    pub kind: String,
    /// `running`, `stopped` or `error` (empty for the API key record).
    pub status: String,
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
    /// initial, create, update, delete, log or shutdown.
    #[serde(rename = "type")]
    pub kind: &'a str,
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

/// POST /instances body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct CreateInstanceRequest {
    pub alias: String,
    /// `server://...` or `client://...`
    #[schema(required = true, min_length = 1, pattern = "^(server|client)://")]
    pub url: String,
}

/// PUT /instances/{id} body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct PutInstanceRequest {
    /// The new `server://...` or `client://...` URL.
    #[schema(required = true, min_length = 1, pattern = "^(server|client)://")]
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
    pub peer: Option<Peer>,
    /// Replaces all tags; `{}` clears them. A key given twice is rejected.
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    pub tags: Option<TagList>,
}

/// PATCH /instances/{id} body; every field optional, applied in this order.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct PatchInstanceRequest {
    /// New alias (an empty string leaves it unchanged).
    pub alias: String,
    /// start, stop, restart or reset (reset zeroes the traffic counters). On `********`,
    /// restart regenerates the API key.
    pub action: String,
    /// New restart policy.
    pub restart: Option<bool>,
    pub meta: Option<MetaPatch>,
}

/// POST /info body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct MasterAliasRequest {
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
            kind: "client".into(),
            status: "running".into(),
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
