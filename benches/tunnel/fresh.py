#!/usr/bin/env python3
"""Fresh connections only, A/B between builds: p50/p99 and the CPU each connection costs.

    benches/tunnel/fresh.py [--tls 0|1] [--type 0-3] [--rounds 7] [--count 500] \\
        label=/path/to/nodepass[,ENV=value...] ...

Run benches/tunnel/run.sh once first: it builds np-loadgen and splice-fwd into BENCH_DIR
(default /tmp/np-bench), which this uses. Starts one `np-loadgen serve` target, the two-hop
splice floor and, per label, a server + client pair of that binary (reverse mode, the same
URLs as bench.py, with the given environment). Per round, `np-loadgen latency` runs COUNT
fresh connections through each variant, in forward order on even rounds and reverse order
on odd ones (a variant's place in the round moves its figures by a few percent); the
figures are the medians over rounds. Around each run it reads utime + stime of every thread
of both processes (/proc/PID/task/*/stat) and reports the CPU per connection by thread name,
summed over both ends (ticks of 1/CLK_TCK s: use a few thousand connections): `np-worker` are
the relay threads, `np-refill` the background thread that opens pool replacements, and the
main thread (the binary's name) runs the relay when NP_WORKER_THREADS=1.
"""

import argparse
import collections
import os
import signal
import statistics
import subprocess
import sys
import time

from benchkit import free_port, kill_all, spawn, wait_echo

SCRATCH = os.environ.get("BENCH_DIR", "/tmp/np-bench")
LOADGEN = os.environ.get("LOADGEN_BIN", f"{SCRATCH}/loadgen/release/np-loadgen")
SPLICE = os.environ.get("SPLICE_BIN", f"{SCRATCH}/splice/release/splice-fwd")
CLK = os.sysconf("SC_CLK_TCK")


def thread_ticks(pids):
    """{thread name: utime + stime ticks} summed over the processes' threads."""
    out = collections.Counter()
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    raw = f.read()
            except OSError:
                continue  # the thread ended meanwhile
            name = raw[raw.index("(") + 1:raw.rindex(")")]
            fields = raw.rsplit(")", 1)[1].split()
            out[name] += int(fields[11]) + int(fields[12])
    return out


def parse_variant(text):
    label, rest = text.split("=", 1)
    binary, *envs = rest.split(",")
    env = dict(e.split("=", 1) for e in envs)
    if not os.access(binary, os.X_OK):
        sys.exit(f"{label}: {binary} is not an executable file")
    return label, binary, env


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tls", default="0")
    ap.add_argument("--type", default="0", help="pool type: 0 TCP, 1 QUIC, 2 WS, 3 HTTP/2")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("variants", nargs="+", help="label=/path/to/nodepass[,ENV=value...]")
    a = ap.parse_args()
    for tool in (LOADGEN, SPLICE):
        if not os.access(tool, os.X_OK):
            sys.exit(f"{tool} is missing: run benches/tunnel/run.sh once to build it")
    signal.signal(signal.SIGTERM, lambda *_: (kill_all(), sys.exit(1)))

    target = f"127.0.0.1:{free_port()}"
    spawn([LOADGEN, "serve", target])
    hop = f"127.0.0.1:{free_port()}"
    floor = f"127.0.0.1:{free_port()}"
    spawn([SPLICE, hop, target])
    spawn([SPLICE, floor, hop])
    variants = [("floor", floor, [])]
    for label, binary, env in map(parse_variant, a.variants):
        t, u = free_port(), free_port()
        s = spawn([binary, f"server://bench@127.0.0.1:{t}/127.0.0.1:{u}"
                           f"?mode=1&tls={a.tls}&type={a.type}&log=warn"], env)
        time.sleep(0.3)
        c = spawn([binary, f"client://bench@127.0.0.1:{t}/{target}?mode=2&log=warn"], env)
        variants.append((label, f"127.0.0.1:{u}", [s.pid, c.pid]))
    for _, addr, _ in variants:
        wait_echo(addr)
    time.sleep(2)  # let the pools fill

    lat = collections.defaultdict(list)
    cpu = collections.defaultdict(collections.Counter)
    conns = collections.Counter()
    print(f"machine: {os.cpu_count()} cores; load {open('/proc/loadavg').read().split()[:3]};"
          f" tls={a.tls} type={a.type}, {a.rounds} rounds x {a.count} connections",
          file=sys.stderr)
    for r in range(a.rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for label, addr, pids in order:
            before = thread_ticks(pids)
            out = subprocess.run([LOADGEN, "latency", addr, str(a.count)],
                                 capture_output=True, text=True, timeout=600)
            after = thread_ticks(pids)
            if out.returncode != 0:
                print(f"{label}: {out.stderr.strip()}", file=sys.stderr)
                continue
            p50, p99 = map(float, out.stdout.split()[:2])
            lat[label].append((p50, p99))
            for name, ticks in after.items():
                cpu[label][name] += ticks - before.get(name, 0)
            conns[label] += a.count

    names = sorted({n for label, c in cpu.items() if label != "floor"
                    for n, ticks in c.items() if ticks > 0})
    floor_p50 = statistics.median(p for p, _ in lat["floor"]) if lat["floor"] else None
    head = (["variant", "p50 us", "p99 us", "p50 / floor", "CPU us/conn"]
            + [f"{n} us/conn" for n in names])
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for label, _, _ in variants:
        if not lat[label]:
            print(f"| {label} | failed |" + " |" * (len(head) - 2))
            continue
        p50 = statistics.median(p for p, _ in lat[label])
        p99 = statistics.median(p for _, p in lat[label])
        ratio = f"{p50 / floor_p50:.2f}x" if floor_p50 else "-"
        def us(ticks):
            return "-" if label == "floor" else f"{ticks / CLK / conns[label] * 1e6:.0f}"
        per = [us(cpu[label][n]) for n in names]
        row = [label, f"{p50:.0f}", f"{p99:.0f}", ratio, us(sum(cpu[label].values()))] + per
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    try:
        main()
    finally:
        kill_all()
