//! Loopback networking for tests: free ports, TCP and UDP echo servers, echo round trips
//! through a tunnel, deterministic payloads, and connections from a stranger's address.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use crate::Proc;

/// Records `port` as handed out in this process; false when it already was. The kernel
/// may hand a released port out again at once, so a port [`free_port`] named (and released)
/// could otherwise be taken by the next listener bound to port 0 before its test binds it:
/// every port the kit hands out or keeps, [`free_port`]'s and its servers' alike, goes
/// through here, and none twice.
pub fn claim(port: u16) -> bool {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    if given.contains(&port) {
        return false;
    }
    given.push(port);
    true
}

/// A port that was free a moment ago on 127.0.0.1 (TCP and UDP), never the same one twice in
/// a process (see [`claim`]).
pub fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        let port = l.local_addr().expect("local addr").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        if claim(port) {
            return port;
        }
    }
}

/// A TCP listener on a 127.0.0.1 port the kit never handed out (see [`claim`]).
pub fn listen() -> TcpListener {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        if claim(l.local_addr().expect("local addr").port()) {
            return l;
        }
    }
}

/// TCP and UDP echo on one 127.0.0.1 port, served by threads until the process ends.
pub struct Echo {
    pub port: u16,
}

impl Echo {
    pub fn start() -> Echo {
        loop {
            let tcp = listen();
            let port = tcp.local_addr().expect("addr").port();
            let Ok(udp) = UdpSocket::bind(("127.0.0.1", port)) else {
                continue;
            };
            std::thread::spawn(move || {
                for conn in tcp.incoming() {
                    let Ok(mut conn) = conn else { continue };
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 65536];
                        loop {
                            match conn.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if conn.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        // Answer the half-close with ours.
                        let _ = conn.shutdown(std::net::Shutdown::Write);
                    });
                }
            });
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while let Ok((n, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(&buf[..n], from);
                }
            });
            return Echo { port };
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Sends `payload` and reads the same number of bytes back (no half-close first, which
/// the reference's TLS relay would turn into a full close).
pub fn echo_once(addr: &str, payload: &[u8], timeout: Duration) -> std::io::Result<Vec<u8>> {
    let sa: SocketAddr = addr.parse().expect("socket address");
    let mut s = TcpStream::connect_timeout(&sa, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    let writer = {
        let mut w = s.try_clone()?;
        let payload = payload.to_vec();
        std::thread::spawn(move || w.write_all(&payload))
    };
    let mut back = vec![0u8; payload.len()];
    s.read_exact(&mut back)?;
    writer
        .join()
        .map_err(|_| std::io::Error::other("writer panicked"))??;
    Ok(back)
}

/// Retries a small echo through `addr` until it works (the tunnel is up) or panics.
pub fn wait_tunnel(addr: &str, timeout: Duration, procs: &[&Proc]) {
    let deadline = Instant::now() + timeout;
    loop {
        match echo_once(addr, b"are you there?", Duration::from_secs(2)) {
            Ok(b) if b == b"are you there?" => return,
            _ => {}
        }
        if Instant::now() > deadline {
            let dumps: Vec<String> = procs.iter().map(|p| p.dump()).collect();
            panic!(
                "tunnel at {addr} not working within {timeout:?}\n{}",
                dumps.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One UDP round trip through `addr`.
pub fn udp_echo(sock: &UdpSocket, addr: &str, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    sock.send_to(payload, addr)?;
    let mut buf = vec![0u8; 65536];
    let (n, _) = sock.recv_from(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// Retries a UDP echo until it works or panics.
pub fn wait_udp(addr: &str, timeout: Duration, procs: &[&Proc]) -> UdpSocket {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(b) = udp_echo(&sock, addr, b"udp ping") {
            if b == b"udp ping" {
                return sock;
            }
        }
        if Instant::now() > deadline {
            let dumps: Vec<String> = procs.iter().map(|p| p.dump()).collect();
            panic!(
                "UDP through {addr} not working within {timeout:?}\n{}",
                dumps.join("\n")
            );
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift), so payloads are not compressible.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A TCP connection to `to` from the loopback address `from` (any port): a stranger's
/// address for the edge tests (127.0.0.2 and up).
pub fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::from((from, 0)).into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(2))?;
    Ok(s.into())
}

/// A loopback TCP (and UDP) echo server's address, served until the process ends.
pub fn echo_server() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], Echo::start().port))
}
