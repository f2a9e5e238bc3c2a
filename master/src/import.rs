//! Import of the Go NodePass master's state (`gob/nodepass.gob` beside its executable):
//! every instance and the API-key record, so that a dashboard written for the Go master
//! keeps its key and its instance ids after the switch (REFERENCE 9.1, "State file").
//!
//! The file is Go `encoding/gob` of `map[string]*Instance`, decoded with the `gobwire`
//! crate into [`GoInstance`]. Decoding and every check happen before anything is written:
//! [`read_go_state`] turns the bytes into a [`Snapshot`] or an error that names what was
//! wrong; [`import_into`] then writes that snapshot into our store in one sled transaction
//! ([`Store::replace_all`]), so a failed import leaves the state as it was. The Go file is
//! only read.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context, Result};
use gobwire::Gob;
use nodepass_proto::url::{self, Role};

use crate::model::{Instance, InstanceKind, InstanceStatus, Meta, Peer, PeerKind, Target};
use crate::store::{MasterRecord, Snapshot, Store, StoredInstance};

/// Largest state file read (the Go master's file holds about 500 bytes per instance; this
/// is room for far more instances than one host runs).
pub const MAX_GOB_BYTES: u64 = 64 * 1024 * 1024;

/// `Peer` as the Go master stores it.
#[derive(Gob, Debug, Default, Clone, PartialEq)]
pub struct GoPeer {
    #[gob(name = "SID")]
    pub sid: String,
    #[gob(name = "Type")]
    pub kind: String,
    #[gob(name = "Alias")]
    pub alias: String,
}

/// `Meta` as the Go master stores it.
#[derive(Gob, Debug, Default, Clone, PartialEq)]
pub struct GoMeta {
    #[gob(name = "Peer")]
    pub peer: GoPeer,
    #[gob(name = "Tags")]
    pub tags: HashMap<String, String>,
}

/// One `Instance` of the Go master: its exported fields, as gob writes them (gob ignores
/// the `gob:"-"` tags, so the base and reset offsets are in the file too; they are internal
/// bookkeeping of the Go master's counters and not imported).
#[derive(Gob, Debug, Default, Clone, PartialEq)]
pub struct GoInstance {
    #[gob(name = "ID")]
    pub id: String,
    #[gob(name = "Alias")]
    pub alias: String,
    #[gob(name = "Type")]
    pub kind: String,
    #[gob(name = "Status")]
    pub status: String,
    #[gob(name = "URL")]
    pub url: String,
    #[gob(name = "Config")]
    pub config: String,
    #[gob(name = "Restart")]
    pub restart: bool,
    #[gob(name = "Meta")]
    pub meta: GoMeta,
    #[gob(name = "Mode")]
    pub mode: i32,
    #[gob(name = "Ping")]
    pub ping: i32,
    #[gob(name = "Pool")]
    pub pool: i32,
    #[gob(name = "TCPS")]
    pub tcps: i32,
    #[gob(name = "UDPS")]
    pub udps: i32,
    #[gob(name = "TCPRX")]
    pub tcprx: u64,
    #[gob(name = "TCPTX")]
    pub tcptx: u64,
    #[gob(name = "UDPRX")]
    pub udprx: u64,
    #[gob(name = "UDPTX")]
    pub udptx: u64,
}

/// Decodes the gob bytes of a Go master's state file (no checks beyond the format).
pub fn decode_gob(bytes: &[u8]) -> Result<BTreeMap<String, GoInstance>> {
    if bytes.is_empty() {
        bail!("the file is empty (a Go master writes at least its API key record)");
    }
    // The decoder can still panic on some corrupt input (the importer's fuzz target found a
    // type id of i64::MIN being negated, gobwire 0.1.0 decode.rs): a bad file must give an
    // error, never take the process down, so a panic in there is turned into one.
    let decoded = std::panic::catch_unwind(|| {
        gobwire::StreamDecoder::new(bytes).decode::<HashMap<String, GoInstance>>()
    })
    .map_err(|_| {
        anyhow::anyhow!(
            "it is not a NodePass state file (the gob decoder gave up on a corrupt type \
             definition); check that you gave the path of gob/nodepass.gob and that the file \
             is whole"
        )
    })?;
    let map = decoded.map_err(|e| {
        anyhow::anyhow!(
            "it is not a NodePass state file (Go gob of map[string]*Instance): {e}; \
             check that you gave the path of gob/nodepass.gob and that the file is whole"
        )
    })?;
    let Some(map) = map else {
        bail!("the file holds no gob value (truncated or empty)");
    };
    Ok(map.into_iter().collect())
}

/// Whether `id` has the form of an instance id the Go master makes (8 lowercase hex).
fn is_instance_id(id: &str) -> bool {
    id.len() == 8
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Turns a decoded Go state into our snapshot: the key record becomes the master record,
/// every other entry an instance (status `stopped`; the master starts the `restart: true`
/// ones). Refuses the whole file, naming the entry, on anything our master could not run.
pub fn to_snapshot(go: BTreeMap<String, GoInstance>) -> Result<Snapshot> {
    let mut master = None;
    let mut instances = Vec::new();
    for (key, g) in go {
        if key != g.id {
            bail!(
                "entry {key:?} holds the instance {:?}: the file is inconsistent",
                g.id
            );
        }
        if Target::parse(&key) == Target::ApiKey {
            if !is_hex(&g.url, 32) {
                bail!(
                    "the API key record holds {:?}, not a 32-character hex key",
                    nodepass_proto::redact::mask_tunnel_keys(&g.url)
                );
            }
            let mid = if is_hex(&g.config, 16) {
                g.config.to_ascii_lowercase()
            } else {
                // An old Go master wrote no master id; it made one at its next start.
                MasterRecord::generate().mid
            };
            master = Some(MasterRecord {
                api_key: g.url.to_ascii_lowercase(),
                mid,
                alias: g.alias,
            });
            continue;
        }
        if !is_instance_id(&key) {
            bail!("instance id {key:?} is not 8 lowercase hex characters");
        }
        let parsed = url::parse_tunnel_url(&g.url).map_err(|e| {
            anyhow::anyhow!(
                "instance {key} ({:?}): its URL is refused: {e}; fix it in the Go master (PUT) \
                 and export again, or delete it there",
                g.alias
            )
        })?;
        let kind = match parsed.role {
            Role::Server => InstanceKind::Server,
            Role::Client => InstanceKind::Client,
        };
        let expected = match kind {
            InstanceKind::Server => "server",
            _ => "client",
        };
        if !g.kind.is_empty() && g.kind != expected {
            bail!(
                "instance {key}: its type is {:?} but its URL is a {expected} URL",
                g.kind
            );
        }
        let config = if g.config.is_empty() {
            parsed.to_config()
        } else {
            g.config
        };
        // The Go master stores any string as the peer type; ours knows the three kinds.
        let peer_kind = PeerKind::parse(&g.meta.peer.kind).unwrap_or_else(|| {
            tracing::warn!(
                "Import: instance {key} has peer type {:?}, not \"0\", \"1\" or \"2\": imported without it",
                g.meta.peer.kind
            );
            PeerKind::None
        });
        instances.push(StoredInstance {
            instance: Instance {
                id: key,
                alias: g.alias,
                kind,
                status: InstanceStatus::Stopped,
                url: g.url,
                config,
                restart: g.restart,
                meta: Meta {
                    peer: Peer {
                        sid: g.meta.peer.sid,
                        kind: peer_kind,
                        alias: g.meta.peer.alias,
                    },
                    tags: g.meta.tags.into_iter().collect(),
                },
                tcprx: g.tcprx,
                tcptx: g.tcptx,
                udprx: g.udprx,
                udptx: g.udptx,
                ..Instance::default()
            },
            pid: None,
        });
    }
    Ok(Snapshot { master, instances })
}

/// Reads and checks a Go master's state file.
pub fn read_go_state(path: &Path) -> Result<Snapshot> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .with_context(|| format!("Cannot open the Go state file {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("Cannot read the Go state file {}", path.display()))?;
    if !meta.is_file() {
        bail!(
            "{} is not a regular file; give the path of the Go master's gob/nodepass.gob",
            path.display()
        );
    }
    let mut bytes = Vec::new();
    file.take(MAX_GOB_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("Cannot read the Go state file {}", path.display()))?;
    if bytes.len() as u64 > MAX_GOB_BYTES {
        bail!(
            "{} is larger than {} MiB: not a NodePass state file",
            path.display(),
            MAX_GOB_BYTES >> 20
        );
    }
    decode_gob(&bytes)
        .and_then(to_snapshot)
        .with_context(|| format!("Cannot import {}", path.display()))
}

/// Run as root on a state directory that belongs to another user (the service's, e.g.
/// /var/lib/nodepass owned by `nodepass`), hands every file the import wrote to that user,
/// so the master can open its state when it starts.
fn give_to_owner(state_dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(state_dir)
        .with_context(|| format!("Cannot read {}", state_dir.display()))?;
    if !nix::unistd::geteuid().is_root() || owner.uid() == 0 {
        return Ok(());
    }
    let (uid, gid) = (owner.uid(), owner.gid());
    let mut stack = vec![state_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("Cannot read {}", dir.display()))?
        {
            let path = entry?.path();
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).with_context(|| {
                format!(
                    "Cannot give {} to the state directory's owner (uid {uid})",
                    path.display()
                )
            })?;
            if path.is_dir() && !path.is_symlink() {
                stack.push(path);
            }
        }
    }
    Ok(())
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub instances: usize,
    /// Instances with `restart: true` (started by the master at its next start).
    pub autostart: usize,
    /// Whether the file had the API-key record (else our master keeps or makes its own key).
    pub key: bool,
}

/// Imports the Go state at `gob` into the state directory `state_dir`. A state that already
/// holds instances is refused unless `replace` is set (then it is replaced as a whole).
/// Nothing is written unless the whole file was read and checked.
pub fn import_into(gob: &Path, state_dir: &Path, replace: bool) -> Result<Imported> {
    let mut snap = read_go_state(gob)?;
    let opened = Store::open(state_dir).with_context(|| {
        format!(
            "Cannot open our state in {} (is a master running on it? stop it first)",
            state_dir.display()
        )
    })?;
    let current = opened.snapshot;
    let existing = current
        .instances
        .iter()
        .filter(|r| Target::parse(&r.instance.id) != Target::ApiKey)
        .count();
    if existing > 0 && !replace {
        bail!(
            "The state in {} already holds {existing} instance(s); nothing was imported. \
             Run the import again with --replace to replace that state with the Go master's, \
             or use another NP_STATE_DIR",
            state_dir.display()
        );
    }
    let key = snap.master.is_some();
    if snap.master.is_none() {
        snap.master = current.master;
    }
    opened.store.replace_all(&snap)?;
    opened.store.write_backup(&snap)?;
    drop(opened.store);
    give_to_owner(state_dir)?;
    Ok(Imported {
        instances: snap.instances.len(),
        autostart: snap.instances.iter().filter(|r| r.instance.restart).count(),
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_refused_with_a_reason() {
        for bytes in [
            &b""[..],
            b"\x00",
            b"\x05hello",
            b"{\"json\":true}",
            &[0xff; 64],
        ] {
            let err = decode_gob(bytes).and_then(to_snapshot).unwrap_err();
            let text = format!("{err:#}");
            assert!(!text.is_empty(), "{bytes:?}");
        }
    }

    #[test]
    fn every_truncation_of_a_real_file_is_refused_or_consistent() {
        let bytes = include_bytes!("../tests/fixtures/go-state/nodepass.gob");
        assert!(decode_gob(bytes).is_ok());
        for n in 0..bytes.len() {
            // Never a panic; a prefix either fails or (never, for gob) decodes.
            let _ = decode_gob(&bytes[..n]).and_then(to_snapshot);
        }
    }

    #[test]
    fn inputs_the_fuzzer_found_are_refused_without_a_panic() {
        let crash = include_bytes!("../tests/fixtures/go-state/fuzz/neg-overflow.gob");
        let err = decode_gob(crash).unwrap_err();
        assert!(
            format!("{err:#}").contains("not a NodePass state file"),
            "{err:#}"
        );
    }

    #[test]
    fn ids_are_checked() {
        assert!(is_instance_id("0a1b2c3d"));
        assert!(!is_instance_id("0A1B2C3D"));
        assert!(!is_instance_id("0a1b2c3"));
        assert!(!is_instance_id("../../x"));
    }
}
