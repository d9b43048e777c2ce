#!/usr/bin/env python3
"""Blinding the owner walk (issue 17, point 6): `portwatch list` with and without a crowd of
PROCS processes of nobody holding FDS file descriptors each.

A root listener is opened first (its owner must still be named). Then, for each binary given,
`portwatch list` (the table, stdout to /dev/null) is timed RUNS times without the crowd and
RUNS times with it, interleaved between binaries, and the median, min and max wall times are
printed, with what the last run said about the root listener's owner and the crowd's.
Run as root (the crowd runs as nobody, uid 65534; its fds are dups of /dev/null, which cost
an fd table entry each and no open file).

Usage: blinding.py --portwatch PATH [--portwatch OTHER ...] [--procs 40] [--fds 20000] [--runs 9]
"""

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time

NOBODY = 65534


def spawn_crowd(procs, fds, close_fds):
    """Forks `procs` processes as nobody, each with `fds` fds and a listener past them (to
    show what the cap skips); returns (pids, crowd_port, release_fd)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    n = min(fds, hard - 64)
    release_r, release_w = os.pipe()
    ready_r, ready_w = os.pipe()
    pids = []
    port = None
    for i in range(procs):
        pid = os.fork()
        if pid == 0:
            os.close(release_w)
            os.close(ready_r)
            for fd in close_fds:
                os.close(fd)
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            null = os.open("/dev/null", os.O_RDONLY)
            held = [os.dup(null) for _ in range(n)]
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(8)
            os.write(ready_w, b"%d\n" % s.getsockname()[1])
            os.close(ready_w)
            os.read(release_r, 1)  # EOF when the parent closes the write end
            os._exit(0)
        pids.append(pid)
    os.close(ready_w)
    with os.fdopen(ready_r) as f:
        ports = [int(line) for line in f]  # EOF once every child has written and closed
    assert len(ports) == procs, f"only {len(ports)} of {procs} crowd processes started"
    os.close(release_r)
    return pids, ports[0], release_w


def time_list(binary):
    t = time.perf_counter()
    subprocess.run([binary, "list"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def owners(binary, port):
    out = subprocess.run([binary, "list", "--format", "json", "-p", str(port)], capture_output=True, check=True)
    s = json.loads(out.stdout)[0]
    return s["owner_unknown_reason"] or f"{len(s['pids'])} pid(s)"


def measure(binaries, runs, label, ports):
    times = {b: [] for b in binaries}
    for i in range(runs):
        order = binaries[i % len(binaries):] + binaries[: i % len(binaries)]
        for b in order:
            times[b].append(time_list(b))
    for b in binaries:
        t = sorted(times[b])
        said = ", ".join(f"{name}: {owners(b, p)}" for name, p in ports)
        print(f"| {label} | `{b}` | {statistics.median(t) * 1000:.1f} | {t[0] * 1000:.1f} | "
              f"{t[-1] * 1000:.1f} | {said} |")


def main():
    sys.stdout.reconfigure(line_buffering=True)
    ap = argparse.ArgumentParser()
    ap.add_argument("--portwatch", action="append", required=True)
    ap.add_argument("--procs", type=int, default=40)
    ap.add_argument("--fds", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=9)
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("blinding.py: run as root (the crowd runs as nobody)")
    root = socket.socket()
    root.bind(("127.0.0.1", 0))
    root.listen(8)
    print("| crowd | binary | median ms | min | max | owners said |")
    print("|---|---|---:|---:|---:|---|")
    measure(a.portwatch, a.runs, "none", [("root's", root.getsockname()[1])])
    pids, crowd_port, release = spawn_crowd(a.procs, a.fds, [root.fileno()])
    try:
        label = f"{a.procs} × {a.fds} fds"
        measure(a.portwatch, a.runs, label, [("root's", root.getsockname()[1]), ("crowd's", crowd_port)])
    finally:
        os.close(release)
        for p in pids:
            os.waitpid(p, 0)


if __name__ == "__main__":
    main()
