#!/usr/bin/env python3
"""Whole-process comparison: `portwatch list` against `ss -tulnp` and `lsof -iTCP -sTCP:LISTEN`.

For each size LISTENERSxPROCESSES it forks PROCESSES holder processes that share LISTENERS TCP
listeners on 127.0.0.1 between them (within RLIMIT_NOFILE), checks that every tool sees them,
then runs the commands interleaved (A B C, B C A, ...) RUNS times and prints the median, min and
max wall time of each. Run it as root for the numbers in BENCHMARKS.md (as another user, ss and
lsof skip other users' processes and portwatch reports them unknown).

With --baseline PATH, another portwatch binary (an earlier build) is timed in the same
interleaving, so a change's cost is measured against the noise of the same moments.

Usage: compare.py [--runs N] [--sizes 10x1,1000x200,10000x2000] [--portwatch PATH]
                  [--baseline PATH]
"""

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time


def spawn_holders(listeners, processes):
    """Forks `processes` children holding `listeners` listeners between them; returns
    (ports, pids, release_fd). Closing release_fd makes every child exit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    per_proc = -(-listeners // processes)
    if per_proc + 16 > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, per_proc + 64), hard))
    release_r, release_w = os.pipe()
    pids, ports = [], []
    remaining = listeners
    for i in range(processes):
        n = min(per_proc, remaining)
        remaining -= n
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(release_w)
            os.close(ready_r)
            socks = []
            for _ in range(n):
                s = socket.socket()
                s.bind(("127.0.0.1", 0))
                s.listen(8)
                socks.append(s)
            os.write(ready_w, json.dumps([s.getsockname()[1] for s in socks]).encode() + b"\n")
            os.close(ready_w)
            os.read(release_r, 1)  # EOF when the parent closes the write end
            os._exit(0)
        os.close(ready_w)
        with os.fdopen(ready_r) as f:
            ports.extend(json.loads(f.readline()))
        pids.append(pid)
    os.close(release_r)
    return ports, pids, release_w


def release(release_w, pids):
    os.close(release_w)
    for pid in pids:
        os.waitpid(pid, 0)


def timed(cmd):
    t = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return (time.perf_counter() - t) * 1000.0


def check_seen(portwatch, ports, pids):
    """Every tool must see every listener, with its owner, or the timing means nothing."""
    out = subprocess.run([portwatch, "list", "--tcp", "-4", "--format", "json"],
                         capture_output=True, check=True).stdout
    listed = {s["port"]: s["pids"] for s in json.loads(out) if s["addr"] == "127.0.0.1"}
    pidset = set(pids)
    missing = [p for p in ports if p not in listed]
    unowned = [p for p in ports if p in listed and not pidset.intersection(listed[p])]
    if missing or unowned:
        sys.exit(f"portwatch missed {len(missing)} listeners, {len(unowned)} owners")
    ss = subprocess.run(["ss", "-tlnpH"], capture_output=True, text=True).stdout
    seen = sum(1 for line in ss.splitlines() if "pid=" in line and "127.0.0.1:" in line)
    if seen < len(ports):
        sys.exit(f"ss saw only {seen} of {len(ports)} owned listeners")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--sizes", default="10x1,1000x200,10000x2000")
    ap.add_argument("--portwatch", default="target/release/portwatch")
    ap.add_argument("--baseline", help="another portwatch binary to time alongside")
    args = ap.parse_args()
    tools = {
        "portwatch list": [args.portwatch, "list"],
        **({"baseline list": [args.baseline, "list"]} if args.baseline else {}),
        "ss -tulnp": ["ss", "-tulnp"],
        "lsof -iTCP -sTCP:LISTEN": ["lsof", "-nP", "-iTCP", "-sTCP:LISTEN"],
    }
    for name, cmd in tools.items():
        if not shutil.which(cmd[0]) and not os.path.exists(cmd[0]):
            sys.exit(f"{name}: {cmd[0]} not found (make bench-compare builds portwatch; "
                     "apt-get install iproute2 lsof)")
    print(f"# {args.runs} interleaved runs per command, wall time in ms, "
          f"{os.cpu_count()} CPUs, kernel {os.uname().release}, "
          f"{len(os.listdir('/proc'))} /proc entries before setup, uid {os.geteuid()}")
    print()
    print("| listeners / processes | command | median | min | max | portwatch ÷ this |")
    print("|---|---|---:|---:|---:|---:|")
    failed = False
    for size in args.sizes.split(","):
        listeners, processes = (int(x) for x in size.split("x"))
        ports, pids, rel = spawn_holders(listeners, processes)
        try:
            check_seen(args.portwatch, ports, pids)
            names = list(tools)
            times = {n: [] for n in names}
            for r in range(args.runs):
                order = names[r % len(names):] + names[:r % len(names)]
                for n in order:
                    times[n].append(timed(tools[n]))
            ours = statistics.median(times["portwatch list"])
            for n in names:
                med = statistics.median(times[n])
                print(f"| {listeners} / {processes} | `{n}` | {med:.1f} | {min(times[n]):.1f} | "
                      f"{max(times[n]):.1f} | {ours / med:.2f} |")
            if ours > statistics.median(times["ss -tulnp"]) / 2:
                failed = True
        finally:
            release(rel, pids)
    print()
    print("target (portwatch median <= half of ss -tulnp at every size):",
          "NOT MET" if failed else "met")


if __name__ == "__main__":
    main()
