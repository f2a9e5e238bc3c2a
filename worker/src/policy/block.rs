//! The `block` policy: refuse SOCKS4/5, HTTP or TLS clients on the incoming side by
//! their first bytes (REFERENCE.md 4.6).
//!
//! [`sniff`] reads the client's first bytes until they decide (they match a blocked
//! protocol, or can no longer match one) or [`FIRST_BYTES_WAIT`] passes, so the verdict
//! does not depend on how the client splits its first write: `"GE"` then `"T / ..."` is
//! as much HTTP as `"GET / ..."` in one segment. A prefix that could still become a
//! blocked protocol when the wait ends is blocked; a client that has sent nothing by then
//! (a protocol where the server speaks first) is let through. The bytes read are handed
//! back so the caller forwards them, byte-identical, before relaying the rest.
//!
//! Deliberate difference: the reference peeks and waits without limit for 8 bytes, which
//! hangs any protocol where the server speaks first.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nodepass_proto::url::BlockSet;
use tokio::io::{AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::RelayPolicy;

/// How long to wait for the client's first bytes to decide.
pub const FIRST_BYTES_WAIT: Duration = Duration::from_secs(1);

/// Every pattern is decided within the first 8 bytes (an HTTP method of up to 7 letters
/// and its space), as in the reference.
const SNIFF_LEN: usize = 8;

/// What the first bytes say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Let the client through; these bytes were read and must be forwarded first.
    Allow(Vec<u8>),
    /// The client speaks this blocked protocol.
    Block(&'static str),
}

/// What a prefix says so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Blocked(&'static str),
    Allowed,
    /// More bytes could still make it a blocked protocol; carries the protocol it would be.
    Open(&'static str),
}

fn decide(block: BlockSet, b: &[u8]) -> Decision {
    if b.is_empty() {
        return Decision::Open("");
    }
    let mut open = None;
    if block.socks && (b[0] == 0x04 || b[0] == 0x05) {
        let name = if b[0] == 0x04 { "SOCKS4" } else { "SOCKS5" };
        match b.get(1) {
            None => open = Some(name),
            Some(&c) if b[0] == 0x04 && (c == 0x01 || c == 0x02) => return Decision::Blocked(name),
            Some(&c) if b[0] == 0x05 && (0x01..=0x03).contains(&c) => {
                return Decision::Blocked(name)
            }
            Some(_) => {}
        }
    }
    if block.http && b[0].is_ascii_uppercase() {
        // An uppercase letter, up to 6 more, then a space (within the first 8 bytes).
        let window = &b[..b.len().min(SNIFF_LEN)];
        match window[1..].iter().position(|c| !c.is_ascii_uppercase()) {
            Some(i) if window[1 + i] == b' ' => return Decision::Blocked("HTTP"),
            Some(_) => {}
            None if window.len() < SNIFF_LEN => open = open.or(Some("HTTP")),
            None => {}
        }
    }
    if block.tls && b[0] == 0x16 {
        return Decision::Blocked("TLS");
    }
    match open {
        Some(name) => Decision::Open(name),
        None => Decision::Allowed,
    }
}

/// The blocked protocol these first bytes belong to, if any (a prefix that could still
/// match counts as not matching).
pub fn classify(block: BlockSet, b: &[u8]) -> Option<&'static str> {
    match decide(block, b) {
        Decision::Blocked(p) => Some(p),
        _ => None,
    }
}

/// Reads the first bytes of a new connection until they decide, or [`FIRST_BYTES_WAIT`]
/// passes. With an empty block set it reads nothing.
pub async fn sniff(block: BlockSet, conn: &mut TcpStream) -> Verdict {
    sniff_until(block, conn, Instant::now() + FIRST_BYTES_WAIT).await
}

/// [`sniff`] with an explicit deadline.
pub async fn sniff_until(block: BlockSet, conn: &mut TcpStream, deadline: Instant) -> Verdict {
    let mut got = Vec::with_capacity(SNIFF_LEN);
    if block.is_empty() {
        return Verdict::Allow(got);
    }
    let mut buf = [0u8; SNIFF_LEN];
    loop {
        match decide(block, &got) {
            Decision::Blocked(p) => return Verdict::Block(p),
            Decision::Allowed => return Verdict::Allow(got),
            Decision::Open(_) => {}
        }
        // Never read past what the patterns need: the rest stays in the socket for the
        // relay (and its zero-copy path).
        let want = SNIFF_LEN - got.len();
        match tokio::time::timeout_at(deadline, conn.read(&mut buf[..want])).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            // EOF, a read error or the deadline: judge what there is.
            _ => {
                return match decide(block, &got) {
                    Decision::Blocked(p) | Decision::Open(p) if !got.is_empty() => {
                        Verdict::Block(p)
                    }
                    _ => Verdict::Allow(got),
                }
            }
        }
    }
}

/// Writes the sniffed bytes of an allowed connection to the far side before the relay
/// starts, counting and rate-charging them as the relay would have (they were read from
/// the counted user socket).
pub async fn forward<W: AsyncWrite + Unpin>(
    prefix: &[u8],
    far: &mut W,
    rx: &AtomicU64,
    policy: &RelayPolicy,
) -> io::Result<()> {
    if prefix.is_empty() {
        return Ok(());
    }
    rx.fetch_add(prefix.len() as u64, Ordering::Relaxed);
    policy.pace_read(prefix.len()).await;
    far.write_all(prefix).await?;
    far.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: BlockSet = BlockSet {
        socks: true,
        http: true,
        tls: true,
    };

    #[test]
    fn patterns_of_the_reference() {
        assert_eq!(classify(ALL, &[4, 1, 0, 80]), Some("SOCKS4"));
        assert_eq!(classify(ALL, &[5, 2, 0, 1]), Some("SOCKS5"));
        assert_eq!(classify(ALL, b"GET / HTTP/1.1"), Some("HTTP"));
        assert_eq!(classify(ALL, b"OPTIONS * HTTP/1.1"), Some("HTTP"));
        assert_eq!(classify(ALL, &[0x16, 3, 1, 0]), Some("TLS"));
        assert_eq!(classify(ALL, b"SSH-2.0-OpenSSH"), None);
        assert_eq!(classify(ALL, b"get / "), None);
        // Eight letters and no space: not a method the reference knows.
        assert_eq!(classify(ALL, b"ABCDEFGH "), None);
        let only_tls = BlockSet {
            tls: true,
            ..BlockSet::default()
        };
        assert_eq!(classify(only_tls, b"GET / HTTP/1.1"), None);
    }

    #[test]
    fn prefixes_stay_open_until_they_decide() {
        assert_eq!(decide(ALL, b"G"), Decision::Open("HTTP"));
        assert_eq!(decide(ALL, b"GE"), Decision::Open("HTTP"));
        assert_eq!(decide(ALL, b"GET "), Decision::Blocked("HTTP"));
        assert_eq!(decide(ALL, b"Ge"), Decision::Allowed);
        assert_eq!(decide(ALL, &[5]), Decision::Open("SOCKS5"));
        assert_eq!(decide(ALL, &[5, 9]), Decision::Allowed);
        assert_eq!(decide(ALL, &[4]), Decision::Open("SOCKS4"));
        assert_eq!(decide(ALL, b"S"), Decision::Open("HTTP"));
        assert_eq!(decide(ALL, b"SS"), Decision::Open("HTTP"));
        assert_eq!(decide(ALL, b"SSH-"), Decision::Allowed);
        assert_eq!(decide(ALL, b"ABCDEFGH"), Decision::Allowed);
        let only_socks = BlockSet {
            socks: true,
            ..BlockSet::default()
        };
        assert_eq!(decide(only_socks, b"G"), Decision::Allowed);
    }
}
