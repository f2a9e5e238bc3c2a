//! The `block` policy: refuse SOCKS4/5, HTTP or TLS clients on the incoming side by
//! looking at their first bytes (REFERENCE.md 4.6). The bytes are only peeked, so an
//! allowed connection is relayed from its first byte.
//!
//! Deliberate difference: the reference waits without limit for 8 bytes, which hangs any
//! protocol where the server speaks first. We judge whatever has arrived once the socket is
//! readable (waiting at most [`FIRST_BYTES_WAIT`] for it); every pattern needs at most the
//! first 8 bytes, and a client's first write normally carries them all.

use std::time::Duration;

use nodepass_proto::url::BlockSet;
use tokio::net::TcpStream;

/// How long to wait for the client's first bytes before letting it through unjudged.
pub const FIRST_BYTES_WAIT: Duration = Duration::from_secs(1);

/// The blocked protocol these first bytes belong to, if any.
pub fn classify(block: BlockSet, b: &[u8]) -> Option<&'static str> {
    if b.is_empty() {
        return None;
    }
    if block.socks && b.len() >= 2 {
        if b[0] == 0x04 && (b[1] == 0x01 || b[1] == 0x02) {
            return Some("SOCKS4");
        }
        if b[0] == 0x05 && (0x01..=0x03).contains(&b[1]) {
            return Some("SOCKS5");
        }
    }
    if block.http && b.len() >= 4 && b[0].is_ascii_uppercase() {
        for (i, &c) in b[1..].iter().enumerate() {
            if c == b' ' {
                return Some("HTTP");
            }
            if !c.is_ascii_uppercase() || i >= 7 {
                break;
            }
        }
    }
    if block.tls && b[0] == 0x16 {
        return Some("TLS");
    }
    None
}

/// Peeks at a new connection and says which blocked protocol it speaks, if any.
pub async fn detect(block: BlockSet, conn: &TcpStream) -> Option<&'static str> {
    if block.is_empty() {
        return None;
    }
    let mut buf = [0u8; 8];
    let peeked = tokio::time::timeout(FIRST_BYTES_WAIT, conn.peek(&mut buf)).await;
    match peeked {
        Ok(Ok(n)) => classify(block, &buf[..n]),
        _ => None,
    }
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
        let only_tls = BlockSet {
            tls: true,
            ..BlockSet::default()
        };
        assert_eq!(classify(only_tls, b"GET / HTTP/1.1"), None);
    }
}
