//! Throughput measurement for the `rate` tests: traffic sources that send as fast as
//! they can (TCP) or at a fixed pace (UDP), and a meter that records when bytes arrive in
//! 10 ms buckets, from which the average over a window and the largest 100 ms burst come.

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BUCKET: Duration = Duration::from_millis(10);

/// Arrival times of bytes, in 10 ms buckets from the first byte, and how late this
/// process was scheduled meanwhile: a receiving thread that was not running while bytes
/// arrived records them late, all at once, which looks like a burst the relay never sent.
#[derive(Clone)]
pub struct Meter {
    inner: Arc<Mutex<(Option<Instant>, Vec<u64>)>>,
    /// Largest oversleep of a 5 ms tick, in ms, per 10 ms bucket.
    lateness: Arc<Mutex<Vec<u64>>>,
}

impl Default for Meter {
    fn default() -> Self {
        let m = Meter {
            inner: Arc::default(),
            lateness: Arc::default(),
        };
        let (inner, lateness) = (Arc::downgrade(&m.inner), m.lateness.clone());
        std::thread::spawn(move || {
            let tick = Duration::from_millis(5);
            while let Some(inner) = inner.upgrade() {
                let before = Instant::now();
                std::thread::sleep(tick);
                let late = before.elapsed().saturating_sub(tick).as_millis() as u64;
                let start = inner.lock().unwrap_or_else(|p| p.into_inner()).0;
                if let Some(start) = start {
                    let i = (start.elapsed().as_nanos() / BUCKET.as_nanos()) as usize;
                    let mut l = lateness.lock().unwrap_or_else(|p| p.into_inner());
                    if l.len() <= i {
                        l.resize(i + 1, 0);
                    }
                    l[i] = l[i].max(late);
                }
            }
        });
        m
    }
}

/// What a meter saw.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// Average over the window, Mbit/s.
    pub mbps: f64,
    /// Largest 100 ms window after the first second, as Mbit/s.
    pub burst_mbps: f64,
    pub bytes: u64,
    /// Longest this process went unscheduled during the window, in ms: with more than
    /// [`Meter::MAX_LATE_MS`] the arrival times (and so `burst_mbps`) are not trustworthy.
    pub late_ms: u64,
}

impl Meter {
    /// Above this scheduling delay a 100 ms burst figure says more about the machine's
    /// load than about the relay.
    pub const MAX_LATE_MS: u64 = 20;

    pub fn add(&self, n: usize) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let start = *g.0.get_or_insert_with(Instant::now);
        let i = (start.elapsed().as_nanos() / BUCKET.as_nanos()) as usize;
        if g.1.len() <= i {
            g.1.resize(i + 1, 0);
        }
        g.1[i] += n as u64;
    }

    /// Figures over `window` from the first byte.
    pub fn measured(&self, window: Duration) -> Measured {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let nb = (window.as_nanos() / BUCKET.as_nanos()) as usize;
        let b: Vec<u64> = (0..nb).map(|i| g.1.get(i).copied().unwrap_or(0)).collect();
        let bytes: u64 = b.iter().sum();
        let per = 10; // buckets per 100 ms
        let mut burst = 0u64;
        for start in 100..nb.saturating_sub(per - 1) {
            burst = burst.max(b[start..start + per].iter().sum());
        }
        let late_ms = {
            let l = self.lateness.lock().unwrap_or_else(|p| p.into_inner());
            l.iter().take(nb).copied().max().unwrap_or(0)
        };
        Measured {
            mbps: bytes as f64 * 8.0 / window.as_secs_f64() / 1e6,
            burst_mbps: burst as f64 * 8.0 / 0.1 / 1e6,
            bytes,
            late_ms,
        }
    }
}

/// A TCP + UDP sink on one 127.0.0.1 port that meters everything it receives.
pub struct Sink {
    pub port: u16,
    pub meter: Meter,
}

impl Sink {
    pub fn start() -> Sink {
        loop {
            let tcp = crate::net::listen();
            let port = tcp.local_addr().expect("addr").port();
            let Ok(udp) = UdpSocket::bind(("127.0.0.1", port)) else {
                continue;
            };
            let meter = Meter::default();
            let m = meter.clone();
            std::thread::spawn(move || {
                for conn in tcp.incoming() {
                    let Ok(mut conn) = conn else { continue };
                    let m = m.clone();
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 1 << 16];
                        while let Ok(n) = conn.read(&mut buf) {
                            if n == 0 {
                                break;
                            }
                            m.add(n);
                        }
                    });
                }
            });
            let m = meter.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                while let Ok(n) = udp.recv(&mut buf) {
                    m.add(n);
                }
            });
            return Sink { port, meter };
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// A TCP target that sends as fast as it can to whoever connects, until they go.
pub fn tcp_source() -> String {
    let l = crate::net::listen();
    let addr = l.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let chunk = vec![0x5au8; 1 << 16];
                while conn.write_all(&chunk).is_ok() {}
            });
        }
    });
    addr
}

/// Writes as fast as it can on `conns` connections to `addr` for `secs`.
pub fn tcp_blast(addr: &str, conns: usize, dur: Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for _ in 0..conns {
        let mut s = TcpStream::connect(addr).expect("connect through the tunnel");
        s.set_write_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let chunk = vec![0xa5u8; 1 << 16];
            while !stop.load(Ordering::Relaxed) {
                match s.write(&chunk) {
                    Ok(_) => {}
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => break,
                }
            }
        }));
    }
    std::thread::sleep(dur);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
}

/// Reads from `conns` connections to `addr` for `dur`, metering what arrives.
pub fn tcp_drain(addr: &str, conns: usize, dur: Duration) -> Meter {
    let meter = Meter::default();
    let until = Instant::now() + dur;
    let mut threads = Vec::new();
    for _ in 0..conns {
        let mut s = TcpStream::connect(addr).expect("connect through the tunnel");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let m = meter.clone();
        threads.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while Instant::now() < until {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => m.add(n),
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => break,
                }
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    meter
}

/// Sends 1200-byte datagrams to `addr` at `mbps` for `dur` from `conns` sockets (UDP
/// sessions), spread evenly.
pub fn udp_blast(addr: &str, conns: usize, mbps: f64, dur: Duration) {
    let socks: Vec<UdpSocket> = (0..conns)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind udp"))
        .collect();
    let payload = vec![0x3cu8; 1200];
    let gap = Duration::from_secs_f64(1200.0 * 8.0 / (mbps * 1e6));
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < dur {
        let due = start + gap.mul_f64(sent as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let _ = socks[(sent as usize) % conns].send_to(&payload, addr);
        sent += 1;
    }
}
