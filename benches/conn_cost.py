#!/usr/bin/env python3
"""What the connection programs (watch --connections) add to a TCP connection: the wall time
of connect + accept + close of both ends on 127.0.0.1 (one listener kept), in three phases
interleaved over ROUNDS rounds: no portwatch programs held, the listener programs only (what
every watcher loads), and the listener programs plus the connection programs. Each phase
value is the mean of a batch of BATCH connections; prints the median of the rounds. Run as
root (`make bench-connections`).

The programs are held by other processes, the portwatch-core test binary's helpers
`lifecycle::hold_for_kill` (listener programs) and `connections::hold_connections`
(connection programs, default options: both directions, no prefix, so every connection is
recorded and sent to the ring buffer — the worst case). Nobody reads that ring buffer, so
once it is full (about 10 000 records) records are dropped and counted: the cost measured is
the programs' run time plus a reservation attempt, which is what a connection costs while a
watcher keeps up.

Wall-clock deltas of a microsecond are noisy on a small shared machine, so it also prints the
kernel's accounting (kernel.bpf_stats_enabled=1): each program's run_time_ns / run_cnt.

Usage: conn_cost.py --holder TEST_BINARY [--rounds N] [--batch N]
"""

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import time

from ebpf_cost import foreign_programs, hold, release

HELPERS = {
    "listen": "source::ebpf::tests::lifecycle::hold_for_kill",
    "conns": "source::ebpf::tests::connections::hold_connections",
}


def conn_cycle(listener, n):
    addr = listener.getsockname()
    t = time.perf_counter_ns()
    for _ in range(n):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.connect(addr)
        a, _ = listener.accept()
        a.close()
        c.close()
    return (time.perf_counter_ns() - t) / n


def phase(binary, listener, batch, which):
    holders = [hold(binary, HELPERS[w]) for w in which]
    try:
        return conn_cycle(listener, batch)
    finally:
        for h in holders:
            release(h)


def kernel_stats(binary, listener, batch):
    if not shutil.which("bpftool"):
        print("bpftool not found: no per-program kernel run times")
        return
    path = "/proc/sys/kernel/bpf_stats_enabled"
    with open(path) as f:
        before = f.read().strip()
    others = foreign_programs()
    holders = [hold(binary, HELPERS["listen"]), hold(binary, HELPERS["conns"])]
    try:
        with open(path, "w") as f:
            f.write("1")
        conn_cycle(listener, batch)
        progs = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True,
                                          text=True, check=True).stdout)
    finally:
        with open(path, "w") as f:
            f.write(before)
        for h in holders:
            release(h)
    print(f"kernel run time per program run ({batch} connections, both ends; run counts include"
          " every other socket call on the host meanwhile):")
    for p in progs:
        if p.get("name", "").startswith("pw_") and p.get("run_cnt") and p["id"] not in others:
            print(f"  {p['name']:16} {p['run_time_ns'] / p['run_cnt']:6.0f} ns x {p['run_cnt']}"
                  f"  ({p['run_cnt'] / batch:.1f} runs, {p['run_time_ns'] / batch:6.0f} ns"
                  " per connection at most)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--holder", required=True)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--batch", type=int, default=2000)
    a = ap.parse_args()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    before = foreign_programs()
    phases = {"none": [], "listen": ["listen"], "listen+conns": ["listen", "conns"]}
    res = {k: [] for k in phases}
    conn_cycle(listener, a.batch)  # warm up
    for r in range(a.rounds):
        order = list(phases) if r % 2 == 0 else list(reversed(phases))
        for name in order:
            res[name].append(phase(a.holder, listener, a.batch, phases[name]))
    print(f"median of {a.rounds} rounds x {a.batch} connections (connect+accept+close both ends),"
          " us per connection")
    base = statistics.median(res["none"])
    for name in phases:
        v = statistics.median(res[name])
        print(f"  {name:13} {v / 1000:6.2f} us  (+{(v - base) / 1000:.2f} us, "
              f"{100 * (v - base) / base:+.0f}%)")
    listen = statistics.median(res["listen"])
    both = statistics.median(res["listen+conns"])
    print(f"  the connection programs alone add {(both - listen) / 1000:+.2f} us per connection")
    after = foreign_programs()
    if before or after:
        print(f"WARNING: other portwatch programs were attached (ids {sorted(before | after)}):"
              " they ran in every phase")
    kernel_stats(a.holder, listener, a.batch)


if __name__ == "__main__":
    main()
