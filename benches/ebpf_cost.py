#!/usr/bin/env python3
"""What the eBPF programs (feature `ebpf`) add to socket calls: the wall time of
socket+bind+listen+close (TCP) and socket+bind+close (UDP) on 127.0.0.1, without and with
the programs attached, interleaved over ROUNDS rounds, each the mean of a batch of BATCH
cycles; prints the median of the rounds. Run as root (`make bench-ebpf`).

The programs are held by another process: the portwatch-core test binary's helper
`ebpf::tests::lifecycle::hold_for_kill` (PORTWATCH_EBPF_HOLD=1), which loads them, prints
PW_HOLD and blocks on stdin until it is closed. Every attached program runs on every matching socket call
on the host, so this is the per-call cost a watcher imposes on the whole machine.

Wall-clock deltas of a microsecond are noisy on a small shared machine (other load, RCU work
after the holder exits), so it also prints the kernel's own accounting: one more held phase
with kernel.bpf_stats_enabled=1 and each program's run_time_ns / run_cnt from bpftool.

Usage: ebpf_cost.py --holder TEST_BINARY [--rounds N] [--batch N]
"""

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import time


def tcp_cycle(n):
    t = time.perf_counter_ns()
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        s.listen()
        s.close()
    return (time.perf_counter_ns() - t) / n


def udp_cycle(n):
    t = time.perf_counter_ns()
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.close()
    return (time.perf_counter_ns() - t) / n


def foreign_programs():
    """ids of portwatch programs (pw_*) loaded now, e.g. by another watcher on the host: they
    run on every socket call too, in both phases. Empty without bpftool."""
    if not shutil.which("bpftool"):
        return set()
    progs = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True,
                                      text=True, check=True).stdout)
    return {p["id"] for p in progs if p.get("name", "").startswith("pw_")}


def hold(binary, helper="source::ebpf::tests::lifecycle::hold_for_kill"):
    """Starts the holder (the test binary's `helper`, which loads programs, prints PW_HOLD and
    waits for stdin to close) and waits until its programs are attached."""
    p = subprocess.Popen(
        [binary, helper, "--exact", "--ignored", "--nocapture"],
        env={"PORTWATCH_EBPF_HOLD": "1", "PATH": "/usr/bin:/bin"},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in p.stdout:
        if "PW_HOLD" in line:
            return p
    p.wait()
    raise SystemExit(f"{helper} did not load its programs (root? see cargo test ebpf)")


def release(p):
    p.stdin.close()  # the helper returns when stdin closes
    p.wait(timeout=10)


def holder_stats(others):
    """{name: (run_time_ns, run_cnt)} of the holder's pw_* programs, as bpftool shows them."""
    progs = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True,
                                      text=True, check=True).stdout)
    return {p["name"]: (p.get("run_time_ns", 0), p.get("run_cnt", 0)) for p in progs
            if p.get("name", "").startswith("pw_") and p["id"] not in others}


def kernel_stats(binary, batch):
    """Per-program ns/run as the kernel measures it, TCP and UDP cycles apart, and what the
    holder's programs add to one cycle in all (needs bpftool); restores the sysctl."""
    if not shutil.which("bpftool"):
        print("bpftool not found: no per-program kernel run times")
        return
    path = "/proc/sys/kernel/bpf_stats_enabled"
    with open(path) as f:
        before = f.read().strip()
    others = foreign_programs()
    holder = hold(binary)
    phases = []
    try:
        with open(path, "w") as f:
            f.write("1")
        for name, cycle in (("tcp socket+bind+listen+close", tcp_cycle),
                            ("udp socket+bind+close", udp_cycle)):
            start = holder_stats(others)
            cycle(batch)
            end = holder_stats(others)
            phases.append((name, {k: (end[k][0] - start.get(k, (0, 0))[0],
                                      end[k][1] - start.get(k, (0, 0))[1]) for k in end}))
    finally:
        with open(path, "w") as f:
            f.write(before)
        release(holder)
    # Other sockets on the host (and other helpers' programs) run these programs too: the
    # counts are what ran during the phase, divided by the phase's own cycles.
    print(f"kernel run time of the holder's programs ({batch} cycles per phase):")
    for name, delta in phases:
        total = sum(ns for ns, _ in delta.values())
        runs = ", ".join(f"{k} {ns / cnt:.0f} ns x {cnt / batch:.2f}"
                         for k, (ns, cnt) in sorted(delta.items()) if cnt)
        print(f"  {name:30} {total / batch:6.0f} ns per cycle  ({runs})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--holder", required=True)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--batch", type=int, default=2000)
    a = ap.parse_args()
    before = foreign_programs()
    res = {("tcp", False): [], ("tcp", True): [], ("udp", False): [], ("udp", True): []}
    tcp_cycle(a.batch), udp_cycle(a.batch)  # warm up
    for r in range(a.rounds):
        for attached in ([False, True] if r % 2 == 0 else [True, False]):
            holder = hold(a.holder) if attached else None
            res[("tcp", attached)].append(tcp_cycle(a.batch))
            res[("udp", attached)].append(udp_cycle(a.batch))
            if holder:
                release(holder)
    print(f"median of {a.rounds} rounds x {a.batch} cycles, ns per cycle")
    for proto, what in (("tcp", "socket+bind+listen+close"), ("udp", "socket+bind+close")):
        off = statistics.median(res[(proto, False)])
        on = statistics.median(res[(proto, True)])
        print(f"{proto} {what:26} without {off / 1000:6.2f} us  with {on / 1000:6.2f} us"
              f"  (+{(on - off) / 1000:.2f} us, {100 * (on - off) / off:+.0f}%)")
    after = foreign_programs()
    if before or after:
        print(f"WARNING: other portwatch programs were attached (ids {sorted(before | after)}"
              f" at the start/end): they ran in both phases, so 'without' is not without")
    kernel_stats(a.holder, a.batch)


if __name__ == "__main__":
    main()
