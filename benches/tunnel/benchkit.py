"""What bench.py and fresh.py share: free loopback ports, the child processes they start
(killed together at the end), and the echo check that says a path is up."""

import os
import socket
import subprocess
import time

# Every process started with spawn(), for kill_all().
procs = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(args, env=None):
    """Starts a child with the environment plus `env`, its output discarded."""
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=e)
    procs.append(p)
    return p


def kill_all():
    for p in procs:
        try:
            p.kill()
        except OSError:
            pass


def wait_echo(addr, timeout=30):
    """Returns once one byte sent to `addr` comes back (the target is an echo server)."""
    host, port = addr.rsplit(":", 1)
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection((host, int(port)), timeout=2) as c:
                c.sendall(b"E")
                if c.recv(1) == b"E":
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"no echo through {addr}")
