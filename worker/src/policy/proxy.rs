//! PROXY protocol v1 (`proxy=1`): the side that dials the target writes one line naming
//! the original client before any data (REFERENCE.md 4.6). Never sent on the tunnel.

use std::net::SocketAddr;

/// `PROXY TCP4|TCP6 <src ip> <dst ip> <src port> <dst port>\r\n`; TCP4 only when both
/// addresses are IPv4.
pub fn v1_line(src: SocketAddr, dst: SocketAddr) -> String {
    let family = if src.is_ipv4() && dst.is_ipv4() {
        "TCP4"
    } else {
        "TCP6"
    };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_shapes() {
        let a: SocketAddr = "10.0.0.1:5000".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:80".parse().expect("addr");
        assert_eq!(v1_line(a, b), "PROXY TCP4 10.0.0.1 127.0.0.1 5000 80\r\n");
        let c: SocketAddr = "[::1]:9".parse().expect("addr");
        assert_eq!(v1_line(a, c), "PROXY TCP6 10.0.0.1 ::1 5000 9\r\n");
    }
}
