//! The tunnel wire protocol as values and codecs (REFERENCE.md 2, 4.1, 5): the HTTP
//! handshake that opens a tunnel, the pool connection id, and the control-channel signals.
//!
//! Everything here is byte-exact with NodePass v1.14.0: the test vectors come from the
//! captures in `shared/spec/go-wire-capture.md`, not from this code.

use std::fmt;
use std::net::SocketAddr;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::url::{PoolType, TlsMode, TunnelKey};

/// Lowercase hex of HMAC-SHA256 keyed with the tunnel key over an empty message: the
/// bearer token of the handshake.
pub fn auth_token(key: &TunnelKey) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    hex::encode(mac.finalize().into_bytes())
}

/// Checks a presented token in constant time (the reference compares the same way).
pub fn verify_auth_token(key: &TunnelKey, presented: &str) -> bool {
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes()) {
        Ok(m) => m,
        Err(_) => return false,
    };
    mac.update(b"");
    let Ok(bytes) = hex::decode(presented) else {
        return false;
    };
    mac.verify_slice(&bytes).is_ok()
}

/// Request and response header that turns on entry proofs between two of our peers: our
/// client sends it with the value `1` in its handshake request; our server answers with the
/// session's nonce (32 lowercase hex digits) in the 200 response. The reference ignores
/// headers it does not know and never sends this one, so with a Go peer on either side
/// nothing changes on the wire.
pub const ENTRY_PROOF_HEADER: &str = "X-NodePass-Entry-Proof";

/// Bytes of an entry proof.
pub const ENTRY_PROOF_LEN: usize = 16;

/// Bytes of the per-session nonce the server hands out with the handshake.
pub const ENTRY_PROOF_NONCE_LEN: usize = 16;

/// The proof that a pool connection comes from the holder of the tunnel key, for one
/// session: the first 16 bytes of HMAC-SHA256 keyed with the tunnel key over a fixed label
/// and the session's nonce. The client sends it on every pool connection before the server
/// gives that connection an id (in-band on TCP and QUIC, as a request header on WebSocket
/// and HTTP/2), so a stranger who shares the client's address (SNAT, CGNAT, a proxy) cannot
/// get an id, let alone user traffic. A new handshake makes a new nonce, so a proof from an
/// earlier session is worth nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct EntryProof {
    tag: [u8; ENTRY_PROOF_LEN],
}

impl fmt::Debug for EntryProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EntryProof(..)")
    }
}

impl EntryProof {
    /// The proof for the session with this nonce.
    pub fn new(key: &TunnelKey, nonce: &[u8; ENTRY_PROOF_NONCE_LEN]) -> Self {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(b"nodepass entry proof v1\0");
        mac.update(nonce);
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; ENTRY_PROOF_LEN];
        tag.copy_from_slice(&full[..ENTRY_PROOF_LEN]);
        EntryProof { tag }
    }

    /// The bytes the client sends.
    pub fn bytes(&self) -> [u8; ENTRY_PROOF_LEN] {
        self.tag
    }

    /// The header form (lowercase hex).
    pub fn to_hex(&self) -> String {
        hex::encode(self.tag)
    }

    /// Whether `presented` is this proof, compared in constant time.
    pub fn verify(&self, presented: &[u8]) -> bool {
        if presented.len() != ENTRY_PROOF_LEN {
            return false;
        }
        // Constant time: every byte is looked at whatever the first difference.
        presented
            .iter()
            .zip(self.tag.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// Whether a header value (hex) is this proof.
    pub fn verify_hex(&self, presented: &str) -> bool {
        let mut bytes = [0u8; ENTRY_PROOF_LEN];
        hex::decode_to_slice(presented.trim(), &mut bytes).is_ok() && self.verify(&bytes)
    }
}

/// A nonce as its header value.
pub fn entry_proof_nonce_hex(nonce: &[u8; ENTRY_PROOF_NONCE_LEN]) -> String {
    hex::encode(nonce)
}

/// The TLS fingerprint carried by `verify`: `sha256:` + uppercase hex pairs of SHA-256 over
/// the leaf certificate DER, joined with `:`.
pub fn cert_fingerprint(cert_der: &[u8]) -> String {
    let digest = Sha256::digest(cert_der);
    let pairs: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
    format!("sha256:{}", pairs.join(":"))
}

/// Which side accepts user traffic after the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flow {
    /// `-`: reverse; the server listens on its target, the client dials.
    Reverse,
    /// `+`: forward; the client listens on its target, the server dials.
    Forward,
}

impl Flow {
    pub fn as_str(self) -> &'static str {
        match self {
            Flow::Reverse => "-",
            Flow::Forward => "+",
        }
    }
}

/// What the server tells the client in the handshake response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelConfig {
    pub flow: Flow,
    pub max: u32,
    pub tls: TlsMode,
    pub pool_type: PoolType,
}

/// Why a handshake message could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("malformed HTTP message: {0}")]
    Http(String),
    #[error("handshake message too large")]
    TooLarge,
    #[error("tunnelHandshake: status {0}")]
    Status(u16),
    #[error("invalid tunnel config in handshake response: {0}")]
    Body(String),
}

impl TunnelConfig {
    /// The response body, byte-identical to Go's `json.Encoder` output (with its `\n`).
    pub fn to_body(&self) -> String {
        format!(
            "{{\"flow\":\"{}\",\"max\":{},\"tls\":\"{}\",\"type\":\"{}\"}}\n",
            self.flow.as_str(),
            self.max,
            self.tls.code(),
            self.pool_type.code()
        )
    }

    /// Parses a response body. Tolerant like Go's decoder (key case, unknown keys, spacing).
    pub fn from_body(body: &[u8]) -> Result<Self, HandshakeError> {
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| HandshakeError::Body(e.to_string()))?;
        let obj = value
            .as_object()
            .ok_or_else(|| HandshakeError::Body("not a JSON object".into()))?;
        let get = |name: &str| {
            obj.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        };
        let flow = match get("flow").and_then(|v| v.as_str()) {
            Some("-") => Flow::Reverse,
            Some("+") => Flow::Forward,
            other => return Err(HandshakeError::Body(format!("flow {other:?}"))),
        };
        let max = get("max")
            .and_then(|v| v.as_u64())
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| HandshakeError::Body("max is not a number".into()))?;
        let tls = get("tls")
            .and_then(|v| v.as_str())
            .and_then(TlsMode::from_code)
            .ok_or_else(|| HandshakeError::Body("tls is not \"0\", \"1\" or \"2\"".into()))?;
        let pool_type = get("type")
            .and_then(|v| v.as_str())
            .and_then(PoolType::from_code)
            .ok_or_else(|| HandshakeError::Body("type is not \"0\"..\"3\"".into()))?;
        Ok(TunnelConfig {
            flow,
            max,
            tls,
            pool_type,
        })
    }

    /// The reference's log form: `FLOW=-|MAX=1024|TLS=0|TYPE=0`.
    pub fn log_form(&self) -> String {
        format!(
            "FLOW={}|MAX={}|TLS={}|TYPE={}",
            self.flow.as_str(),
            self.max,
            self.tls.code(),
            self.pool_type.code()
        )
    }
}

/// The client's handshake request, exactly as the Go client sends it.
pub fn handshake_request(host_header: &str, key: &TunnelKey) -> Vec<u8> {
    format!(
        "GET / HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: Go-http-client/1.1\r\nAuthorization: Bearer {}\r\nAccept-Encoding: gzip\r\n\r\n",
        auth_token(key)
    )
    .into_bytes()
}

/// Our client's handshake request: the Go client's bytes plus one header asking for entry
/// proofs ([`ENTRY_PROOF_HEADER`]), which a Go server ignores.
pub fn handshake_request_with_proof(host_header: &str, key: &TunnelKey) -> Vec<u8> {
    let mut req = handshake_request(host_header, key);
    // Before the blank line that ends the head.
    req.truncate(req.len() - 2);
    req.extend_from_slice(format!("{ENTRY_PROOF_HEADER}: 1\r\n\r\n").as_bytes());
    req
}

/// Whether a complete request head asks for entry proofs.
pub fn request_wants_entry_proof(head: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        return false;
    }
    header_value(req.headers, ENTRY_PROOF_HEADER).is_some_and(|v| v.trim() == "1")
}

/// Largest handshake request or response head we read before giving up.
pub const MAX_HANDSHAKE_HEAD: usize = 16 * 1024;

/// The server's judgement of one handshake request (checked in the reference's order:
/// method, path, token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeVerdict {
    Accept,
    MethodNotAllowed,
    NotFound,
    Unauthorized,
}

/// Parses a request head from `buf`. `Ok(None)`: need more bytes. `Ok(Some((verdict, n)))`:
/// a complete head of `n` bytes (any request body is ignored, as a GET has none).
pub fn judge_handshake_request(
    buf: &[u8],
    key: &TunnelKey,
) -> Result<Option<(HandshakeVerdict, usize)>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let Some(n) = head_length(buf, req.parse(buf))? else {
        return Ok(None);
    };
    let verdict = if req.method != Some("GET") {
        HandshakeVerdict::MethodNotAllowed
    } else if req.path.map(request_path) != Some("/") {
        HandshakeVerdict::NotFound
    } else {
        let token =
            header_value(req.headers, "authorization").and_then(|v| v.strip_prefix("Bearer "));
        match token {
            Some(t) if verify_auth_token(key, t) => HandshakeVerdict::Accept,
            _ => HandshakeVerdict::Unauthorized,
        }
    };
    Ok(Some((verdict, n)))
}

/// What `httparse` made of the bytes so far, for either end of the handshake: the length
/// of a complete head, `None` while more bytes may complete it, or why it never will.
fn head_length(
    buf: &[u8],
    parsed: httparse::Result<usize>,
) -> Result<Option<usize>, HandshakeError> {
    match parsed {
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) if buf.len() > MAX_HANDSHAKE_HEAD => {
            Err(HandshakeError::TooLarge)
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(HandshakeError::Http(e.to_string())),
    }
}

/// The first header of that name (case-insensitive, as HTTP names are), if it is UTF-8.
fn header_value<'a>(headers: &[httparse::Header<'a>], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
}

/// The path part of a request target, as Go's `r.URL.Path` sees it for the check: the
/// query cut off, and the scheme and authority of an absolute-form target (`http://h/`)
/// dropped.
fn request_path(target: &str) -> &str {
    let target = target.split_once('?').map_or(target, |(p, _)| p);
    for scheme in ["http://", "https://"] {
        if let Some(rest) = target.strip_prefix(scheme) {
            return rest.find('/').map_or("", |i| &rest[i..]);
        }
    }
    target
}

/// The server's response bytes for a verdict. `date` is an HTTP date for the `Date:`
/// header (the caller owns the clock).
pub fn handshake_response(
    verdict: &HandshakeVerdict,
    config: &TunnelConfig,
    date: &str,
) -> Vec<u8> {
    handshake_response_with_proof(verdict, config, date, None)
}

/// As [`handshake_response`]; an accepted request that asked for entry proofs also gets
/// the session's nonce in [`ENTRY_PROOF_HEADER`].
pub fn handshake_response_with_proof(
    verdict: &HandshakeVerdict,
    config: &TunnelConfig,
    date: &str,
    nonce: Option<&[u8; ENTRY_PROOF_NONCE_LEN]>,
) -> Vec<u8> {
    let (status, body, ctype) = match verdict {
        HandshakeVerdict::Accept => ("200 OK", config.to_body(), "application/json"),
        HandshakeVerdict::MethodNotAllowed => (
            "405 Method Not Allowed",
            "Method Not Allowed\n".to_string(),
            "text/plain; charset=utf-8",
        ),
        HandshakeVerdict::NotFound => (
            "404 Not Found",
            "Not Found\n".to_string(),
            "text/plain; charset=utf-8",
        ),
        HandshakeVerdict::Unauthorized => (
            "401 Unauthorized",
            "Unauthorized\n".to_string(),
            "text/plain; charset=utf-8",
        ),
    };
    let nosniff = if matches!(verdict, HandshakeVerdict::Accept) {
        ""
    } else {
        "X-Content-Type-Options: nosniff\r\n"
    };
    let proof = match (verdict, nonce) {
        (HandshakeVerdict::Accept, Some(n)) => {
            format!("{ENTRY_PROOF_HEADER}: {}\r\n", entry_proof_nonce_hex(n))
        }
        _ => String::new(),
    };
    format!(
        "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Type: {ctype}\r\n{nosniff}{proof}Date: {date}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Parses the server's handshake response. `Ok(None)`: need more bytes.
pub fn parse_handshake_response(buf: &[u8]) -> Result<Option<TunnelConfig>, HandshakeError> {
    Ok(parse_handshake_answer(buf)?.map(|(config, _)| config))
}

/// As [`parse_handshake_response`], with the entry-proof nonce when the server sent one.
#[allow(clippy::type_complexity)]
pub fn parse_handshake_answer(
    buf: &[u8],
) -> Result<Option<(TunnelConfig, Option<[u8; ENTRY_PROOF_NONCE_LEN]>)>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let Some(n) = head_length(buf, resp.parse(buf))? else {
        return Ok(None);
    };
    let status = resp.code.unwrap_or(0);
    if status != 200 {
        return Err(HandshakeError::Status(status));
    }
    let len =
        header_value(resp.headers, "content-length").and_then(|v| v.trim().parse::<usize>().ok());
    let nonce = header_value(resp.headers, ENTRY_PROOF_HEADER).and_then(|v| {
        let mut n = [0u8; ENTRY_PROOF_NONCE_LEN];
        hex::decode_to_slice(v.trim(), &mut n).ok().map(|_| n)
    });
    let body = &buf[n..];
    let config = match len {
        Some(len) if len > MAX_HANDSHAKE_HEAD => Err(HandshakeError::TooLarge),
        Some(len) if body.len() < len => return Ok(None),
        Some(len) => TunnelConfig::from_body(&body[..len]),
        // No length: the body runs to the end of the stream; parse once it is a full line.
        None if body.ends_with(b"\n") => TunnelConfig::from_body(body),
        None if body.len() > MAX_HANDSHAKE_HEAD => Err(HandshakeError::TooLarge),
        None => return Ok(None),
    }?;
    Ok(Some((config, nonce)))
}

/// The 4-byte id a server gives each pool connection; named by its 8-char lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolId(pub [u8; 4]);

impl PoolId {
    /// The id of the first entry a server pool hands out: the control channel.
    pub const CONTROL: PoolId = PoolId([0; 4]);

    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 8 {
            return None;
        }
        let mut out = [0u8; 4];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(PoolId(out))
    }
}

impl fmt::Display for PoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for PoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PoolId({})", self.to_hex())
    }
}

/// The user address a `tcp`/`udp` signal carries: the peer address of the user's
/// connection as the sending side saw it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RemoteAddr {
    /// An IP address and port: what this implementation and the reference always send.
    Socket(SocketAddr),
    /// Text that is no socket address, kept as the peer sent it (an IPv6 zone given by
    /// interface name, as Go writes it, or nothing at all): shown in logs and used to tell
    /// sessions apart, but it cannot go into a PROXY line.
    Other(String),
}

impl RemoteAddr {
    /// Reads the `remote` field of a signal; never fails (see [`RemoteAddr::Other`]).
    pub fn parse(text: &str) -> Self {
        match text.parse() {
            Ok(addr) => RemoteAddr::Socket(addr),
            Err(_) => RemoteAddr::Other(text.to_string()),
        }
    }

    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self {
            RemoteAddr::Socket(addr) => Some(*addr),
            RemoteAddr::Other(_) => None,
        }
    }
}

impl From<SocketAddr> for RemoteAddr {
    fn from(addr: SocketAddr) -> Self {
        RemoteAddr::Socket(addr)
    }
}

impl fmt::Display for RemoteAddr {
    /// The wire form: `1.2.3.4:5`, `[::1]:5` (as Go writes them), or the text as received.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteAddr::Socket(addr) => addr.fmt(f),
            RemoteAddr::Other(text) => f.write_str(text),
        }
    }
}

/// One control-channel message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// A user TCP connection from `remote` rides on pool entry `id`.
    Tcp {
        remote: RemoteAddr,
        id: PoolId,
    },
    /// A user UDP session from `remote` rides on pool entry `id`.
    Udp {
        remote: RemoteAddr,
        id: PoolId,
    },
    Ping,
    Pong,
    Flush,
    /// TLS fingerprint check of pool entry `id`.
    Verify {
        id: PoolId,
        fp: String,
    },
    /// An action this version does not know; ignored by receivers (kept for logs).
    Unknown {
        action: String,
    },
}

/// The signals that name a pool entry by its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolSignal {
    Tcp,
    Udp,
    Verify,
}

impl fmt::Display for PoolSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PoolSignal::Tcp => "tcp",
            PoolSignal::Udp => "udp",
            PoolSignal::Verify => "verify",
        })
    }
}

/// Why a control-channel line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    /// A signal of a known action whose pool id is not 8 hex digits (or is missing): no
    /// entry can ever have it. The receiver treats it as a named entry that never comes.
    #[error("{action} signal names pool id {id:?}: expected 8 hex digits")]
    PoolId { action: PoolSignal, id: String },
    #[error("signal is not valid base64: {0}")]
    Base64(String),
    #[error("signal is not a JSON object: {0}")]
    Json(String),
    #[error("signal has no action")]
    NoAction,
    #[error("signal line too long ({0} bytes)")]
    TooLong(usize),
}

/// Longest control-channel line accepted (a `verify` line is under 300 bytes).
pub const MAX_SIGNAL_LINE: usize = 64 * 1024;

impl Signal {
    pub fn action(&self) -> &str {
        match self {
            Signal::Tcp { .. } => "tcp",
            Signal::Udp { .. } => "udp",
            Signal::Ping => "ping",
            Signal::Pong => "pong",
            Signal::Flush => "flush",
            Signal::Verify { .. } => "verify",
            Signal::Unknown { action } => action,
        }
    }

    /// The JSON form with Go's field order (action, remote, id, fp) and `omitempty`.
    pub fn to_json(&self) -> String {
        let (remote, id, fp) = match self {
            Signal::Tcp { remote, id } | Signal::Udp { remote, id } => {
                (remote.to_string(), id.to_hex(), "")
            }
            Signal::Verify { id, fp } => (String::new(), id.to_hex(), fp.as_str()),
            _ => (String::new(), String::new(), ""),
        };
        let mut out = String::from("{\"action\":");
        go_json_string(&mut out, self.action());
        for (name, value) in [("remote", remote.as_str()), ("id", id.as_str()), ("fp", fp)] {
            if !value.is_empty() {
                out.push_str(",\"");
                out.push_str(name);
                out.push_str("\":");
                go_json_string(&mut out, value);
            }
        }
        out.push('}');
        out
    }

    /// One wire line: base64(JSON XOR key) + `\n`.
    pub fn encode(&self, key: &TunnelKey) -> Vec<u8> {
        let mut json = self.to_json().into_bytes();
        xor_with_key(&mut json, key.as_bytes());
        let mut line = B64.encode(json).into_bytes();
        line.push(b'\n');
        line
    }

    /// Decodes one line (with or without its trailing `\n`).
    pub fn decode(line: &[u8], key: &TunnelKey) -> Result<Signal, SignalError> {
        if line.len() > MAX_SIGNAL_LINE {
            return Err(SignalError::TooLong(line.len()));
        }
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut raw = B64
            .decode(line)
            .map_err(|e| SignalError::Base64(e.to_string()))?;
        xor_with_key(&mut raw, key.as_bytes());
        Self::from_json(&raw)
    }

    /// Parses the JSON object like Go's decoder: field names case-insensitive, unknown
    /// fields ignored, missing fields empty. A pool id that cannot be one is refused with
    /// [`SignalError::PoolId`]; a `remote` that is no socket address is kept as text.
    pub fn from_json(raw: &[u8]) -> Result<Signal, SignalError> {
        let value: serde_json::Value =
            serde_json::from_slice(raw).map_err(|e| SignalError::Json(e.to_string()))?;
        let obj = value
            .as_object()
            .ok_or_else(|| SignalError::Json("not an object".into()))?;
        let field = |name: &str| -> String {
            // Go matches an exact name first, then a case-insensitive one.
            obj.get(name)
                .or_else(|| {
                    obj.iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v)
                })
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let pool_id = |action: PoolSignal| {
            let id = field("id");
            PoolId::from_hex(&id).ok_or(SignalError::PoolId { action, id })
        };
        let action = field("action");
        let signal = match action.as_str() {
            "" => return Err(SignalError::NoAction),
            "tcp" => Signal::Tcp {
                remote: RemoteAddr::parse(&field("remote")),
                id: pool_id(PoolSignal::Tcp)?,
            },
            "udp" => Signal::Udp {
                remote: RemoteAddr::parse(&field("remote")),
                id: pool_id(PoolSignal::Udp)?,
            },
            "ping" => Signal::Ping,
            "pong" => Signal::Pong,
            "flush" => Signal::Flush,
            "verify" => Signal::Verify {
                id: pool_id(PoolSignal::Verify)?,
                fp: field("fp"),
            },
            _ => Signal::Unknown { action },
        };
        Ok(signal)
    }
}

/// XOR with the key repeated from offset 0 (an empty key leaves the data unchanged).
pub fn xor_with_key(data: &mut [u8], key: &[u8]) {
    if key.is_empty() {
        return;
    }
    for (b, k) in data.iter_mut().zip(key.iter().cycle()) {
        *b ^= k;
    }
}

/// Go's `encoding/json` string escaping (HTML-safe: `<`, `>`, `&` as `\u00XX`).
fn go_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // Go 1.22+ writes these two short forms too (encoding/json appendString).
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests;
