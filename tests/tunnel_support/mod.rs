//! Shared helpers of the tunnel end-to-end tests: spawning the built `nodepass` binary as a
//! child process (killed on drop, output captured line by line), free loopback ports, and
//! TCP/UDP echo servers. Everything runs on 127.0.0.0/8 with real sockets.

#![allow(dead_code)]

pub mod interop;
pub mod meter;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_nodepass")
}

/// Short intervals so a test sees several ticks and restarts within seconds.
pub const FAST_ENV: &[(&str, &str)] = &[
    ("NP_REPORT_INTERVAL", "500ms"),
    ("NP_SERVICE_COOLDOWN", "200ms"),
    ("NP_MIN_POOL_INTERVAL", "50ms"),
    ("NP_MAX_POOL_INTERVAL", "300ms"),
    ("NP_SHUTDOWN_TIMEOUT", "2s"),
    ("NP_UDP_READ_TIMEOUT", "2s"),
];

/// A running child process; killed (and reaped) when dropped.
pub struct Proc {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    name: String,
}

impl Proc {
    /// Starts `nodepass <args>` with the fast NP_* settings plus `env`.
    pub fn start(name: &str, program: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in FAST_ENV.iter().chain(env.iter()) {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                }
            });
        }
        Proc {
            child,
            lines,
            name: name.to_string(),
        }
    }

    /// `nodepass worker <url>`: JSON report lines.
    pub fn worker(name: &str, url: &str, env: &[(&str, &str)]) -> Proc {
        Proc::start(name, bin(), &["worker", url], env)
    }

    /// `nodepass <url>`: foreground with human logs.
    pub fn foreground(name: &str, url: &str, env: &[(&str, &str)]) -> Proc {
        Proc::start(name, bin(), &[url], env)
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Everything printed so far, for failure messages.
    pub fn dump(&self) -> String {
        format!("--- {} ---\n{}", self.name, self.lines().join("\n"))
    }

    /// Waits until a printed line satisfies `pred`; panics with the output otherwise.
    pub fn wait_line(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| pred(l)) {
                return l;
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: no line with {what} within {timeout:?}\n{}",
                    self.name,
                    self.dump()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Number of printed lines containing `s`.
    pub fn count(&self, s: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(s)).count()
    }

    /// Sends SIGTERM and waits for the exit (at most `timeout`); returns the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.wait_exit(timeout)
    }

    /// Waits for the process to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the reader threads catch the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port that was free a moment ago on 127.0.0.1 (TCP and UDP).
pub fn free_port() -> u16 {
    // The kernel may hand the same ephemeral port out again once it is released, so two
    // calls in a row could name one port for both a tunnel and its target: never give a
    // port out twice in one test process.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        let port = l.local_addr().expect("local addr").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
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
            let tcp = TcpListener::bind("127.0.0.1:0").expect("bind echo");
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

/// A started reverse-mode pair on loopback (users connect to the server's `users` port; the
/// client dials an echo server), waited for until it carries traffic.
pub struct Pair {
    pub echo: Echo,
    pub server: Proc,
    pub client: Proc,
    /// The server's tunnel port.
    pub tunnel: u16,
    /// Where users connect (`127.0.0.1:PORT`).
    pub users: String,
}

/// Starts a pair with key `k`, pool `type`, and `client_query` appended to the client's
/// URL (e.g. `&min=4`).
pub fn reverse_pair(pool_type: u8, client_query: &str) -> Pair {
    const UP: Duration = Duration::from_secs(20);
    let echo = Echo::start();
    let (tunnel, uport) = (free_port(), free_port());
    let server = Proc::worker(
        "server",
        &format!("server://k@127.0.0.1:{tunnel}/127.0.0.1:{uport}?mode=1&type={pool_type}"),
        &[],
    );
    server.wait_line("ready", UP, |l| l.contains("\"kind\":\"ready\""));
    let client = Proc::worker(
        "client",
        &format!(
            "client://k@127.0.0.1:{tunnel}/{}?mode=2{client_query}",
            echo.addr()
        ),
        &[],
    );
    let users = format!("127.0.0.1:{uport}");
    wait_tunnel(&users, UP, &[&server, &client]);
    Pair {
        echo,
        server,
        client,
        tunnel,
        users,
    }
}
