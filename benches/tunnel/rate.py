#!/usr/bin/env python3
"""Rate-limit accuracy of a built nodepass, through a single-end tunnel on loopback.

For each limit (Mbit/s), protocol (TCP/UDP) and number of parallel connections or UDP
sessions (1/8), the traffic is offered faster than the limit and metered where it arrives
(the target), in 10 ms buckets from its first byte. Printed per row: the average over
BENCH_SECS (default 5) and the largest 100 ms window after the first second. The last rows
are the relay throughput with rate=0 (the zero-copy path), 1 and 8 TCP connections.

    NODEPASS_BIN=target/release/nodepass benches/tunnel/rate.py
    BENCH_LIMITS=1,10 BENCH_SECS=3 benches/tunnel/rate.py

Prints a markdown table (paste it into benches/RESULTS.md with the date and notes).
"""

import os
import socket
import subprocess
import sys
import threading
import time

BIN = os.environ.get("NODEPASS_BIN", "target/release/nodepass")
SECS = float(os.environ.get("BENCH_SECS", "5"))
LIMITS = [int(x) for x in os.environ.get("BENCH_LIMITS", "1,10,100,1000").split(",")]
BUCKET = 0.01


def free_port():
    while True:
        t = socket.socket()
        t.bind(("127.0.0.1", 0))
        port = t.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            t.close()
            u.close()


class Meter:
    def __init__(self):
        self.lock = threading.Lock()
        self.start = None
        self.buckets = []

    def add(self, n):
        now = time.monotonic()
        with self.lock:
            if self.start is None:
                self.start = now
            i = int((now - self.start) / BUCKET)
            if i >= len(self.buckets):
                self.buckets.extend([0] * (i + 1 - len(self.buckets)))
            self.buckets[i] += n

    def figures(self, secs):
        with self.lock:
            nb = int(secs / BUCKET)
            b = (self.buckets + [0] * nb)[:nb]
        total = sum(b)
        burst = max((sum(b[s : s + 10]) for s in range(100, nb - 9)), default=0)
        return total * 8 / secs / 1e6, burst * 8 / 0.1 / 1e6


class Sink:
    """TCP + UDP target on one port that meters what it receives."""

    def __init__(self):
        self.port = free_port()
        self.meter = Meter()
        self.tcp = socket.socket()
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind(("127.0.0.1", self.port))
        self.tcp.listen(64)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", self.port))
        self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        threading.Thread(target=self._accept, daemon=True).start()
        threading.Thread(target=self._udp, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.tcp.accept()
            except OSError:
                return
            threading.Thread(target=self._drain, args=(c,), daemon=True).start()

    def _drain(self, c):
        buf = bytearray(1 << 20)
        while True:
            try:
                n = c.recv_into(buf)
            except OSError:
                break
            if n == 0:
                break
            self.meter.add(n)
        c.close()

    def _udp(self):
        buf = bytearray(1 << 16)
        while True:
            try:
                n = self.udp.recv_into(buf)
            except OSError:
                return
            self.meter.add(n)

    def close(self):
        self.tcp.close()
        self.udp.close()


def start_tunnel(target_port, rate):
    port = free_port()
    url = f"client://127.0.0.1:{port}/127.0.0.1:{target_port}?mode=1&rate={rate}&log=warn"
    env = dict(os.environ, NP_REPORT_INTERVAL="1h")
    p = subprocess.Popen([BIN, url], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return p, port
        except OSError:
            time.sleep(0.05)
    p.kill()
    sys.exit(f"nodepass did not listen on {port}")


def tcp_blast(port, conns, secs):
    stop = time.monotonic() + secs
    chunk = b"\xa5" * (1 << 20)

    def run():
        s = socket.create_connection(("127.0.0.1", port))
        s.settimeout(0.2)
        while time.monotonic() < stop:
            try:
                s.send(chunk)
            except socket.timeout:
                pass
            except OSError:
                break
        s.close()

    ts = [threading.Thread(target=run) for _ in range(conns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def udp_blast(port, conns, mbps, secs):
    """Offers twice the limit (datagrams of 8 KiB over 1200 B at low limits)."""
    size = 1200 if mbps <= 10 else 8192
    stop = time.monotonic() + secs
    gap = size * 8 / (2 * mbps * 1e6) * conns

    def run():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        payload = b"\x3c" * size
        start = time.monotonic()
        sent = 0
        while True:
            now = time.monotonic()
            if now >= stop:
                break
            due = start + sent * gap
            if due > now:
                time.sleep(due - now)
            try:
                s.sendto(payload, ("127.0.0.1", port))
            except OSError:
                pass
            sent += 1
        s.close()

    ts = [threading.Thread(target=run) for _ in range(conns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def measure(rate, proto, conns):
    sink = Sink()
    p, port = start_tunnel(sink.port, rate)
    try:
        if proto == "tcp":
            tcp_blast(port, conns, SECS + 1.0)
        else:
            udp_blast(port, conns, rate, SECS + 1.0)
        time.sleep(0.2)
        return sink.meter.figures(SECS)
    finally:
        p.terminate()
        p.wait()
        sink.close()


def main():
    print(f"| limit Mbit/s | proto | conns | measured Mbit/s | error | max 100 ms burst Mbit/s | burst / limit |")
    print("|---|---|---|---|---|---|---|")
    for limit in LIMITS:
        for proto in ("tcp", "udp"):
            for conns in (1, 8):
                mbps, burst = measure(limit, proto, conns)
                err = (mbps - limit) / limit * 100
                print(
                    f"| {limit} | {proto.upper()} | {conns} | {mbps:.2f} | {err:+.1f}% "
                    f"| {burst:.2f} | {burst / limit:.2f}x |",
                    flush=True,
                )
    for conns in (1, 8):
        mbps, _ = measure(0, "tcp", conns)
        print(f"| 0 (unlimited) | TCP | {conns} | {mbps:.0f} | - | - | - |", flush=True)


if __name__ == "__main__":
    main()
