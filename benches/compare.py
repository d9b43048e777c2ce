#!/usr/bin/env python3
"""Whole-process comparison: `portwatch list` against `ss -tulnp` and `lsof -iTCP -sTCP:LISTEN`.

For each size LISTENERSxPROCESSES it forks PROCESSES holder processes that share LISTENERS TCP
listeners on 127.0.0.1 between them (within RLIMIT_NOFILE), checks that every tool sees them
(portwatch with each owner lookup), then runs the commands interleaved (each round in a shuffled order) RUNS
times and prints the median, min and max wall time of each, and its peak resident memory (the
largest ru_maxrss of its runs, from wait4). portwatch runs three ways: `--owners auto` (the
default), `--owners bpf` (the BPF task_file iterator) and `--owners proc` (the /proc walk).
Run it as root for the numbers in BENCHMARKS.md (as another user, ss and lsof skip other
users' processes, portwatch reports them unknown and cannot load the iterator).

Targets (issue 13): with the BPF path, portwatch <= 0.15 x ss at 10000/2000 and <= 0.5 x ss
at the other sizes; never slower than the /proc path at any size; peak RSS < 20 MiB at
10000/2000.

With --baseline PATH, another portwatch binary (an earlier build) is timed in the same
interleaving, so a change's cost is measured against the noise of the same moments.

Usage: compare.py [--runs N] [--sizes 10x1,1000x200,10000x2000] [--portwatch PATH]
                  [--baseline PATH]
"""

import argparse
import json
import os
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time


def spawn_holders(listeners, processes, base=None):
    """Forks `processes` children holding `listeners` listeners between them, on ports the
    kernel picks or, with `base`, on base, base + 1, ...; returns (ports, pids, release_fd).
    Closing release_fd makes every child exit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    per_proc = -(-listeners // processes)
    if per_proc + 16 > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, per_proc + 64), hard))
    release_r, release_w = os.pipe()
    pids, ports = [], []
    remaining = listeners
    for i in range(processes):
        n = min(per_proc, remaining)
        first = listeners - remaining
        remaining -= n
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(release_w)
            os.close(ready_r)
            socks = []
            for j in range(n):
                s = socket.socket()
                if base:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", base + first + j if base else 0))
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
    """Wall time of one run, in ms."""
    t = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return (time.perf_counter() - t) * 1000.0


GNU_TIME = "/usr/bin/time"


def peak_rss_kib(cmd, runs=3):
    """Largest peak resident set of `runs` runs, in KiB, measured by GNU time (%M). A child
    of this script would report this script's own size: Linux counts the memory of the
    process it was forked from, until exec, in ru_maxrss. GNU time is small, so what it
    reports is the command's. Not timed: time's own fork and exec would be."""
    if not os.access(GNU_TIME, os.X_OK):
        return None
    peak = 0
    for _ in range(runs):
        out = subprocess.run([GNU_TIME, "-f", "%M", *cmd], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, check=False).stderr
        peak = max(peak, int(out.strip().splitlines()[-1]))
    return peak


def check_seen(portwatch, ports, pids):
    """Every tool must see every listener, with its owner, or the timing means nothing."""
    pidset = set(pids)
    for owners in ("bpf", "proc"):
        out = subprocess.run([portwatch, "list", "--tcp", "-4", "--format", "json",
                              "--owners", owners], capture_output=True, check=True).stdout
        listed = {s["port"]: s["pids"] for s in json.loads(out) if s["addr"] == "127.0.0.1"}
        missing = [p for p in ports if p not in listed]
        unowned = [p for p in ports if p in listed and not pidset.intersection(listed[p])]
        if missing or unowned:
            sys.exit(f"portwatch --owners {owners} missed {len(missing)} listeners, "
                     f"{len(unowned)} owners")
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
        "portwatch list --owners bpf": [args.portwatch, "list", "--owners", "bpf"],
        "portwatch list --owners proc": [args.portwatch, "list", "--owners", "proc"],
        **({"baseline list": [args.baseline, "list"]} if args.baseline else {}),
        "ss -tulnp": ["ss", "-tulnp"],
        "lsof -iTCP -sTCP:LISTEN": ["lsof", "-nP", "-iTCP", "-sTCP:LISTEN"],
    }
    for name, cmd in tools.items():
        if not shutil.which(cmd[0]) and not os.path.exists(cmd[0]):
            sys.exit(f"{name}: {cmd[0]} not found (make bench-compare builds portwatch; "
                     "apt-get install iproute2 lsof)")
    print(f"# {args.runs} interleaved runs per command, wall time in ms (peak RSS: 3 more runs "
          f"under {GNU_TIME}), "
          f"{os.cpu_count()} CPUs, kernel {os.uname().release}, "
          f"{len(os.listdir('/proc'))} /proc entries before setup, uid {os.geteuid()}")
    print()
    print("| listeners / processes | command | median | min | max | ÷ ss | peak RSS MiB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    failed = []
    for size in args.sizes.split(","):
        listeners, processes = (int(x) for x in size.split("x"))
        ports, pids, rel = spawn_holders(listeners, processes)
        try:
            check_seen(args.portwatch, ports, pids)
            names = list(tools)
            times = {n: [] for n in names}
            for r in range(args.runs):
                # A fresh order each round (seeded: repeatable): in a fixed rotation each
                # command always follows the same one (portwatch after lsof, which has just
                # read all of /proc), and that neighbour's effect looked like its own cost.
                order = random.Random(r).sample(names, len(names))
                for n in order:
                    times[n].append(timed(tools[n]))
            rss = {n: peak_rss_kib(tools[n]) for n in names}
            med = {n: statistics.median(times[n]) for n in names}
            ss = med["ss -tulnp"]
            for n in names:
                mib = "n/a" if rss[n] is None else f"{rss[n] / 1024:.1f}"
                print(f"| {listeners} / {processes} | `{n}` | {med[n]:.1f} | {min(times[n]):.1f} | "
                      f"{max(times[n]):.1f} | {med[n] / ss:.2f} | {mib} |")
            bpf, proc, auto = (med["portwatch list --owners bpf"],
                               med["portwatch list --owners proc"], med["portwatch list"])
            limit = 0.15 if listeners >= 10000 else 0.5
            if min(bpf, auto) > limit * ss:
                failed.append(f"{size}: BPF path {min(bpf, auto) / ss:.2f} x ss > {limit}")
            if auto > proc:
                failed.append(f"{size}: auto {auto:.1f} ms slower than --owners proc {proc:.1f}")
            if bpf > proc:
                failed.append(f"{size}: --owners bpf {bpf:.1f} ms slower than --owners proc "
                              f"{proc:.1f}")
            peak = (rss["portwatch list --owners bpf"] or 0) / 1024
            if listeners >= 10000 and peak >= 20:
                failed.append(f"{size}: peak RSS {peak:.1f} MiB >= 20")
        finally:
            release(rel, pids)
    print()
    print("targets (BPF path <= 0.15 x ss at 10000 listeners, <= 0.5 x elsewhere; never slower "
          "than --owners proc; < 20 MiB at 10000):", "NOT MET: " + "; ".join(failed) if failed
          else "met")


if __name__ == "__main__":
    main()
