#!/usr/bin/env python3
"""Tunnel benchmark orchestrator (run through run.sh, which builds the binaries).

Variants, all on loopback in front of the same target (np-loadgen serve):
  direct     the target itself
  splice2    two chained splice-fwd hops (the practical limit of a two-hop relay)
  np-tls0    our server + client, TCP pool, tls=0 (reverse mode, users at the server)
  np-tls1    the same with tls=1
  rathole    rathole 0.5, tcp transport
  go-tls0    the Go NodePass v1.14.0 binary (GO_NODEPASS_BIN, default
  go-tls1    /tmp/go-nodepass/nodepass), same URLs as np-tls0/1; left out when absent
  np-quic, np-ws, np-h2 (and go-quic, go-ws, go-h2): pool types 1, 2, 3 at tls=1
             (BENCH_TYPES picks the types; empty leaves them out)

Per round, each measurement runs once per variant, variants interleaved, so background
noise (other builds on the machine) spreads over all of them; the figure reported is the
median over rounds. Throughput: np-loadgen send, 1 and 8 streams. Relay CPU: utime+stime of
the relay processes during the throughput run, per Gbit/s moved. Latency: fresh connection,
one byte echoed, p50/p99 over COUNT connections. RSS: VmRSS of the relay processes summed,
idle after start and while 1000 relayed connections are held open.
"""

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from benchkit import free_port, kill_all, spawn, wait_echo

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SECS = float(os.environ.get("BENCH_SECS", "3"))
LAT_COUNT = int(os.environ.get("BENCH_LAT_COUNT", "2000"))
HOLD = int(os.environ.get("BENCH_HOLD", "1000"))

NODEPASS = os.environ["NODEPASS_BIN"]
LOADGEN = os.environ["LOADGEN_BIN"]
SPLICE = os.environ["SPLICE_BIN"]
RATHOLE = os.environ.get("RATHOLE_BIN", "")
GO_NODEPASS = os.environ.get("GO_NODEPASS_BIN", "/tmp/go-nodepass/nodepass")
if not (os.path.isfile(GO_NODEPASS) and os.access(GO_NODEPASS, os.X_OK)):
    print(f"no Go NodePass binary at {GO_NODEPASS}: go-tls0/go-tls1 left out "
          "(build it with ../shared/tools/go-nodepass/build.sh)", file=sys.stderr)
    GO_NODEPASS = ""

# BENCH_ONLY=np-tls0,np-tls1: run just these variants (for quick checks while working).
ONLY = set(filter(None, os.environ.get("BENCH_ONLY", "").split(",")))
CLK = os.sysconf("SC_CLK_TCK")


def cleanup(*_):
    kill_all()
    sys.exit(1)


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK


def rss_kib(pids, field="VmRSS:"):
    """Summed VmRSS (or another /proc status field, e.g. RssAnon:) of the processes."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field):
                    total += int(line.split()[1])
    return total


def setup(target):
    """Starts every variant; returns {name: (entry_addr, [pids])}."""
    v = {"direct": (target, [])}

    a, b = free_port(), free_port()
    p1 = spawn([SPLICE, f"127.0.0.1:{b}", target])
    p2 = spawn([SPLICE, f"127.0.0.1:{a}", f"127.0.0.1:{b}"])
    v["splice2"] = (f"127.0.0.1:{a}", [p1.pid, p2.pid])

    # (binary, label, tls, NP_WORKER_THREADS, pool type)
    np_variants = [(NODEPASS, "np", "0", None, "0"), (NODEPASS, "np", "1", None, "0")]
    # BENCH_NP_THREADS=1,2: also run tls=0 with NP_WORKER_THREADS set to each value.
    for th in filter(None, os.environ.get("BENCH_NP_THREADS", "").split(",")):
        np_variants.append((NODEPASS, "np", "0", th, "0"))
    # NODEPASS_EXTRA=base=/path/a,v1=/path/b: other builds' tls=0/1 as base-tls0, ... (and
    # their BENCH_TYPES variants as base-ws, ...),
    # to see what a change moved within one run.
    extras = [item.split("=", 1)
              for item in filter(None, os.environ.get("NODEPASS_EXTRA", "").split(","))]
    for label, path in extras:
        np_variants += [(path, label, "0", None, "0"), (path, label, "1", None, "0")]
    if GO_NODEPASS:
        np_variants += [(GO_NODEPASS, "go", "0", None, "0"), (GO_NODEPASS, "go", "1", None, "0")]
    # BENCH_TYPES=1,2,3 (the default): the other pool transports at tls=1 (QUIC and HTTP/2
    # are always encrypted), ours and the Go program's, as np-quic, go-quic, np-ws, ...
    for ptype in filter(None, os.environ.get("BENCH_TYPES", "1,2,3").split(",")):
        np_variants.append((NODEPASS, "np", "1", None, ptype))
        # The other builds of NODEPASS_EXTRA on this type too (as base-ws, ...).
        np_variants += [(path, label, "1", None, ptype) for label, path in extras]
        if GO_NODEPASS:
            np_variants.append((GO_NODEPASS, "go", "1", None, ptype))
    type_names = {"1": "quic", "2": "ws", "3": "h2"}
    for binary, prefix, tls, threads, ptype in np_variants:
        t, u = free_port(), free_port()
        env = {"NP_WORKER_THREADS": threads} if threads else {}
        s = spawn([binary, f"server://bench@127.0.0.1:{t}/127.0.0.1:{u}"
                           f"?mode=1&tls={tls}&type={ptype}&log=warn"], env)
        time.sleep(0.3)
        # The Go program's QUIC, WebSocket and HTTP/2 pairs get a target of their own:
        # their pairs have hung a session of the shared target in some runs, and one hang
        # must not spoil the other paths.
        own = target
        if prefix == "go" and ptype != "0":
            own = f"127.0.0.1:{free_port()}"
            spawn([LOADGEN, "serve", own])
            time.sleep(0.2)
        c = spawn([binary, f"client://bench@127.0.0.1:{t}/{own}?mode=2&log=warn"], env)
        if ptype != "0":
            name = f"{prefix}-{type_names.get(ptype, 'type' + ptype)}"
        else:
            name = f"{prefix}-tls{tls}" + (f"-{threads}t" if threads else "")
        v[name] = (f"127.0.0.1:{u}", [s.pid, c.pid])

    if RATHOLE:
        t, u = free_port(), free_port()
        d = tempfile.mkdtemp(prefix="rathole-bench-")
        with open(f"{d}/server.toml", "w") as f:
            f.write(f'[server]\nbind_addr = "127.0.0.1:{t}"\n[server.services.bench]\n'
                    f'token = "bench"\nbind_addr = "127.0.0.1:{u}"\n')
        with open(f"{d}/client.toml", "w") as f:
            f.write(f'[client]\nremote_addr = "127.0.0.1:{t}"\n[client.services.bench]\n'
                    f'token = "bench"\nlocal_addr = "{target}"\n')
        env = {"RUST_LOG": "warn"}
        s = spawn([RATHOLE, "--server", f"{d}/server.toml"], env)
        time.sleep(0.3)
        c = spawn([RATHOLE, "--client", f"{d}/client.toml"], env)
        v["rathole"] = (f"127.0.0.1:{u}", [s.pid, c.pid])

    for name in [n for n in v if ONLY and n not in ONLY]:
        for pid in v.pop(name)[1]:
            os.kill(pid, signal.SIGKILL)
    for name, (addr, _) in v.items():
        wait_echo(addr)
    time.sleep(2)  # let pools fill and settle
    return v


def run(args):
    out = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"{args}: {out.stderr.strip()}")
    return out.stdout.split()


def throughput(addr, pids, streams):
    c0 = cpu_seconds(pids) if pids else 0
    bytes_, took, gbps = run([LOADGEN, "send", addr, str(streams), str(SECS)])
    c1 = cpu_seconds(pids) if pids else 0
    gbps = float(gbps)
    cores = (c1 - c0) / float(took)
    return gbps, (cores / gbps * 100 if pids and gbps > 0 else None)


def hold_rss(addr, pids):
    h = subprocess.Popen([LOADGEN, "hold", addr, str(HOLD)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    line = h.stdout.readline().strip()
    if not line.startswith("held "):
        h.kill()
        raise RuntimeError(f"hold through {addr}: {line!r}")
    count = int(line.split()[1])
    time.sleep(1)
    r = rss_kib(pids)
    h.stdin.close()
    h.wait(timeout=60)
    return r, count


def main():
    signal.signal(signal.SIGTERM, cleanup)
    tport = free_port()
    target = f"127.0.0.1:{tport}"
    spawn([LOADGEN, "serve", target])
    time.sleep(0.3)
    variants = setup(target)
    names = list(variants)
    res = {n: {"t1": [], "t8": [], "cpu1": [], "cpu8": [], "p50": [], "p99": []} for n in names}
    idle = {n: rss_kib(p) for n, (_, p) in variants.items() if p}
    idle_anon = {n: rss_kib(p, "RssAnon:") for n, (_, p) in variants.items() if p}

    for r in range(ROUNDS):
        print(f"round {r + 1}/{ROUNDS}", file=sys.stderr)
        for streams, key in ((1, "1"), (8, "8")):
            for n in names:
                addr, pids = variants[n]
                try:
                    g, cpu = throughput(addr, pids, streams)
                except RuntimeError as e:
                    # A variant that fails a measurement (the Go program's QUIC and HTTP/2
                    # pools stall on some runs) shows "-" there; the rest go on.
                    print(f"{n}: throughput x{streams} failed: {e}", file=sys.stderr)
                    continue
                res[n]["t" + key].append(g)
                if cpu is not None:
                    res[n]["cpu" + key].append(cpu)
        for n in names:
            addr, _ = variants[n]
            try:
                p50, p99 = run([LOADGEN, "latency", addr, str(LAT_COUNT)])
            except RuntimeError as e:
                print(f"{n}: latency failed: {e}", file=sys.stderr)
                continue
            res[n]["p50"].append(float(p50))
            res[n]["p99"].append(float(p99))

    held = {}
    for n in names:
        if not variants[n][1]:
            continue
        try:
            held[n] = hold_rss(variants[n][0], variants[n][1])
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
            print(f"{n}: hold failed: {e}", file=sys.stderr)

    med = lambda xs: statistics.median(xs) if xs else None
    rows = []
    for n in names:
        m = {k: med(v) for k, v in res[n].items()}
        m["idle_mib"] = idle.get(n, 0) / 1024 if n in idle else None
        m["anon_mib"] = idle_anon.get(n, 0) / 1024 if n in idle_anon else None
        m["held_mib"] = held[n][0] / 1024 if n in held else None
        m["held_count"] = held[n][1] if n in held else None
        m["per_conn_kib"] = ((held[n][0] - idle[n]) / held[n][1] / 2) if n in held and held[n][1] else None
        rows.append((n, m))

    def f(x, fmt):
        return "-" if x is None else fmt.format(x)

    print(f"| variant | 1 stream Gbit/s | 8 streams Gbit/s | CPU %core per Gbit/s (1 / 8) "
          f"| p50 us | p99 us | RSS idle MiB (anon) | RSS {HOLD} conns MiB | KiB per conn per side |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, m in rows:
        print(f"| {n} | {f(m['t1'], '{:.2f}')} | {f(m['t8'], '{:.2f}')} | "
              f"{f(m['cpu1'], '{:.0f}')} / {f(m['cpu8'], '{:.0f}')} | {f(m['p50'], '{:.0f}')} | "
              f"{f(m['p99'], '{:.0f}')} | {f(m['idle_mib'], '{:.1f}')} ({f(m['anon_mib'], '{:.1f}')}) | "
              f"{f(m['held_mib'], '{:.1f}')}"
              f"{'' if m['held_count'] in (None, HOLD) else ' (held only %d)' % m['held_count']} | "
              f"{f(m['per_conn_kib'], '{:.1f}')} |")
    print()
    print("raw: " + json.dumps(res))
    kill_all()


if __name__ == "__main__":
    try:
        main()
    finally:
        kill_all()
