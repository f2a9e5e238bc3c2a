//! Faults and load for the healing tests and the soak bench: a user-space TCP relay that
//! stands in for the network and can make every open connection go silent (a dead path, a
//! NAT that lost its state), and users arriving every 100 ms whose tries are recorded.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::echo_once;

/// One user's try: when it started, when it ended, whether its bytes came back whole.
#[derive(Clone, Copy, Debug)]
pub struct Try {
    pub start: Instant,
    pub end: Instant,
    pub ok: bool,
}

/// Users connecting to `addr` every 100 ms, each in its own thread (so a user who waits does
/// not delay the next), each sending 4 KiB and reading the echo within 20 s.
pub struct Users {
    stop: Arc<AtomicBool>,
    tries: Arc<Mutex<Vec<Try>>>,
    driver: Option<std::thread::JoinHandle<Vec<std::thread::JoinHandle<()>>>>,
}

impl Users {
    pub fn start(addr: String) -> Users {
        let stop = Arc::new(AtomicBool::new(false));
        let tries = Arc::new(Mutex::new(Vec::new()));
        let (s, t) = (stop.clone(), tries.clone());
        let driver = std::thread::spawn(move || {
            let mut threads = Vec::new();
            let payload = crate::pattern(4096, 11);
            while !s.load(Ordering::SeqCst) {
                let (addr, t, payload) = (addr.clone(), t.clone(), payload.clone());
                threads.push(std::thread::spawn(move || {
                    let start = Instant::now();
                    let ok = echo_once(&addr, &payload, Duration::from_secs(20))
                        .is_ok_and(|back| back == payload);
                    let end = Instant::now();
                    t.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(Try { start, end, ok });
                }));
                std::thread::sleep(Duration::from_millis(100));
            }
            threads
        });
        Users {
            stop,
            tries,
            driver: Some(driver),
        }
    }

    /// Stops, waits for every user, and returns their tries in start order.
    pub fn finish(mut self) -> Vec<Try> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(d) = self.driver.take() {
            for t in d.join().expect("users") {
                let _ = t.join();
            }
        }
        let mut v = self.tries.lock().unwrap_or_else(|p| p.into_inner()).clone();
        v.sort_by_key(|t| t.start);
        v
    }
}

/// A user-space TCP relay standing in for the network between client and server. `cut()`
/// makes every connection open at that moment go silent for good, as a dead path or a
/// NAT that lost its state would: bytes are taken and dropped, nothing is closed or reset.
/// Connections made after the cut pass normally (the network came back).
pub struct Relay {
    /// Where the client connects instead of the server's tunnel port.
    pub port: u16,
    cuts: Arc<AtomicU64>,
}

impl Relay {
    /// A relay to 127.0.0.1:`to`.
    pub fn start(to: u16) -> Relay {
        Relay::run(to, None)
    }

    /// A relay to 127.0.0.1:`to` that also behaves as a NAT or a TCP-terminating middlebox
    /// with an idle timeout: a connection that has carried no byte in either direction for
    /// `idle` loses its state, and from then on every byte on it is taken and dropped (no
    /// FIN, no RST). Keep-alive probes cannot save it: they end at the relay's own sockets,
    /// as they would at a load balancer or proxy. A connection that carries traffic at least
    /// every `idle` (a control channel's pings) lives.
    pub fn start_idle_timeout(to: u16, idle: Duration) -> Relay {
        Relay::run(to, Some(idle))
    }

    fn run(to: u16, idle: Option<Duration>) -> Relay {
        let listener = crate::net::listen();
        let port = listener.local_addr().expect("addr").port();
        let cuts = Arc::new(AtomicU64::new(0));
        let c = cuts.clone();
        let epoch = Instant::now();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(a) = conn else { continue };
                let Ok(b) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                let born = c.load(Ordering::SeqCst);
                // ms since `epoch` of the connection's last byte either way; u64::MAX once
                // its state is lost.
                let last = Arc::new(AtomicU64::new(epoch.elapsed().as_millis() as u64));
                for (mut from, mut to) in [
                    (a.try_clone().expect("clone"), b.try_clone().expect("clone")),
                    (b, a),
                ] {
                    let (c, last) = (c.clone(), last.clone());
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 65536];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if c.load(Ordering::SeqCst) != born {
                                continue; // silent: taken, never delivered
                            }
                            if let Some(idle) = idle {
                                let now = epoch.elapsed().as_millis() as u64;
                                let seen = last.load(Ordering::SeqCst);
                                if seen == u64::MAX
                                    || now.saturating_sub(seen) >= idle.as_millis() as u64
                                {
                                    last.store(u64::MAX, Ordering::SeqCst);
                                    continue; // state lost while idle: dropped for good
                                }
                                last.store(now, Ordering::SeqCst);
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        if c.load(Ordering::SeqCst) == born
                            && last.load(Ordering::SeqCst) != u64::MAX
                        {
                            let _ = to.shutdown(Shutdown::Write);
                        }
                    });
                }
            }
        });
        Relay { port, cuts }
    }

    /// Every connection open now goes silent for good.
    pub fn cut(&self) {
        self.cuts.fetch_add(1, Ordering::SeqCst);
    }
}
