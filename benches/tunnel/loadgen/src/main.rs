//! np-loadgen: the load side of the tunnel benchmark, std only.
//!
//! - `serve ADDR`: the target. Each connection's first byte picks the behaviour: `E` echoes
//!   everything (the `E` included), `S` discards everything and answers the byte count
//!   (8 bytes, little endian) once the sender half-closes.
//! - `send ADDR STREAMS SECS`: throughput. STREAMS connections in `S` mode write 256 KiB
//!   blocks for SECS seconds; prints `bytes seconds gbit_per_s` (bytes as counted by the
//!   target, so only what made it through).
//! - `latency ADDR COUNT`: COUNT fresh connections one after the other: connect, send `E`,
//!   wait for the `E` back, close. Prints `p50_us p99_us`.
//! - `hold ADDR COUNT`: opens COUNT connections, round-trips one `E` on each (so each is
//!   relayed end to end), prints `held COUNT`, keeps them until stdin closes.

use std::io::{BufRead, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};
use std::{env, process, thread};

fn usage() -> ! {
    eprintln!("usage: np-loadgen serve ADDR | send ADDR STREAMS SECS | latency ADDR COUNT | hold ADDR COUNT");
    process::exit(2)
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize) -> T {
    args.get(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| usage())
}

fn serve(addr: &str) {
    let l = TcpListener::bind(addr).unwrap_or_else(|e| {
        eprintln!("bind {addr}: {e}");
        process::exit(1)
    });
    for c in l.incoming() {
        let Ok(mut c) = c else { continue };
        let _ = c.set_nodelay(true);
        thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                let mut first = [0u8; 1];
                if c.read_exact(&mut first).is_err() {
                    return;
                }
                let mut buf = vec![0u8; 256 * 1024];
                match first[0] {
                    b'E' => {
                        if c.write_all(&first).is_err() {
                            return;
                        }
                        loop {
                            match c.read(&mut buf) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    if c.write_all(&buf[..n]).is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    }
                    b'S' => {
                        let mut total: u64 = 0;
                        loop {
                            match c.read(&mut buf) {
                                Ok(0) => break,
                                Err(_) => return,
                                Ok(n) => total += n as u64,
                            }
                        }
                        let _ = c.write_all(&total.to_le_bytes());
                    }
                    _ => {}
                }
            })
            .ok();
    }
}

fn send(addr: &str, streams: usize, secs: f64) {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let handles: Vec<_> = (0..streams)
        .map(|_| {
            let addr = addr.to_string();
            thread::spawn(move || -> std::io::Result<u64> {
                let mut c = TcpStream::connect(&addr)?;
                c.set_nodelay(true)?;
                c.write_all(b"S")?;
                let block = vec![0x5au8; 256 * 1024];
                let mut written = 0u64;
                while Instant::now() < deadline {
                    c.write_all(&block)?;
                    written += block.len() as u64;
                }
                c.shutdown(Shutdown::Write)?;
                let mut n = [0u8; 8];
                match c.read_exact(&mut n) {
                    Ok(()) => Ok(u64::from_le_bytes(n)),
                    // A relay that closes both ways when the user half-closes (the Go
                    // program over TLS and TCP pools) cuts the target's count off: fall back
                    // to what was written, which overstates by what sat in socket buffers
                    // (a few MiB against GiBs).
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        eprintln!("no count from the target; counting bytes written");
                        Ok(written)
                    }
                    Err(e) => Err(e),
                }
            })
        })
        .collect();
    let mut bytes = 0u64;
    for h in handles {
        match h.join() {
            Ok(Ok(n)) => bytes += n,
            Ok(Err(e)) => {
                eprintln!("stream failed: {e}");
                process::exit(1)
            }
            Err(_) => process::exit(1),
        }
    }
    let took = started.elapsed().as_secs_f64();
    println!("{bytes} {took:.3} {:.3}", bytes as f64 * 8.0 / took / 1e9);
}

fn latency(addr: &str, count: usize) {
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        let mut c = TcpStream::connect(addr).unwrap_or_else(|e| {
            eprintln!("connect: {e}");
            process::exit(1)
        });
        let _ = c.set_nodelay(true);
        let mut b = [0u8; 1];
        if c.write_all(b"E")
            .and_then(|_| c.read_exact(&mut b))
            .is_err()
        {
            eprintln!("round trip failed");
            process::exit(1)
        }
        samples.push(t.elapsed().as_nanos() as u64);
        drop(c);
    }
    samples.sort_unstable();
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0;
    println!("{:.1} {:.1}", pct(0.50), pct(0.99));
}

fn hold(addr: &str, count: usize) {
    // Stops at the first connection that fails and reports how many are held, so that a
    // relay that cannot hold `count` still gets measured at what it does hold.
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        let mut c = match TcpStream::connect(addr) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("connect {i}: {e}");
                break;
            }
        };
        let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(10)));
        let mut b = [0u8; 1];
        if c.write_all(b"E")
            .and_then(|_| c.read_exact(&mut b))
            .is_err()
        {
            eprintln!("round trip {i} failed");
            break;
        }
        held.push(c);
    }
    println!("held {}", held.len());
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    drop(held);
}

fn main() {
    let args: Vec<String> = env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("serve") => serve(&arg::<String>(&args, 2)),
        Some("send") => send(&arg::<String>(&args, 2), arg(&args, 3), arg(&args, 4)),
        Some("latency") => latency(&arg::<String>(&args, 2), arg(&args, 3)),
        Some("hold") => hold(&arg::<String>(&args, 2), arg(&args, 3)),
        _ => usage(),
    }
}
