#!/usr/bin/env python3
"""What `portwatch watch --all-netns` costs with many namespaces (make bench-netns; root).

1. Idle CPU: NAMESPACES network namespaces (each a forked process that unshares its network
   namespace and holds LISTENERS TCP listeners), `portwatch watch --all-netns` at default
   settings, CPU time of all its threads (/proc/PID/task/*/schedstat) over IDLE_SECONDS, as %
   of one core. Also its thread count and open descriptors.
2. Pick-up latency: a new namespace with one listener is created ROUNDS times; time from the
   listener's listen() to its open line on stdout (median and max).

Usage: netns_idle.py [--portwatch PATH] [--namespaces N] [--listeners N] [--idle-seconds S]
                     [--rounds N]
"""

import argparse
import ctypes
import os
import random
import socket
import statistics
import sys
import time

from pwbench import Watch

CLONE_NEWNET = 0x40000000
libc = ctypes.CDLL(None, use_errno=True)


def sandbox(listeners, base_port):
    """Forks a process in a new network namespace holding `listeners` TCP listeners.
    Returns (pid, time its listeners were listening) once they are."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        if libc.unshare(CLONE_NEWNET) != 0:
            os._exit(1)
        held = []
        for i in range(listeners):
            s = socket.socket()
            s.bind(("0.0.0.0", base_port + i))
            s.listen()
            held.append(s)
        os.write(w, b"x")
        os.close(w)
        while True:
            time.sleep(3600)
    os.close(w)
    if os.read(r, 1) != b"x":
        sys.exit("a sandbox could not unshare its network namespace (needs root)")
    os.close(r)
    return pid, time.monotonic()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--portwatch", default="target/release/portwatch")
    ap.add_argument("--namespaces", type=int, default=40)
    ap.add_argument("--listeners", type=int, default=5)
    ap.add_argument("--idle-seconds", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=10)
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench-netns needs root: it creates network namespaces")
    pids = [sandbox(a.listeners, 9000)[0] for _ in range(a.namespaces)]
    try:
        w = Watch(a.portwatch, ["--all-netns", "-p", "9000-9999"])
        want = a.namespaces * a.listeners
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with w.lock:
                if len(w.events) >= want:
                    break
            time.sleep(0.05)
        with w.lock:
            seen = len(w.events)
        if seen < want:
            sys.exit(f"only {seen} of {want} listeners reported at start")
        time.sleep(2)  # past the first discovery and full-scan periods
        c0, t0 = w.cpu_seconds(), time.monotonic()
        time.sleep(a.idle_seconds)
        c1, t1 = w.cpu_seconds(), time.monotonic()
        idle = 100 * (c1 - c0) / (t1 - t0)
        threads, fds = w.threads(), w.fds()

        latencies = []
        for i in range(a.rounds):
            port = 9900 + i
            pid, listening = sandbox(1, port)
            pids.append(pid)
            hit = w.wait_for(lambda e: e["event"] == "open" and e["port"] == port, 10)
            latencies.append(None if hit is None else hit[0] - listening)
            time.sleep(random.uniform(0.1, 1.1))  # land anywhere in the discovery period
        w.stop()
    finally:
        for pid in pids:
            os.kill(pid, 9)
            os.waitpid(pid, 0)

    print(f"# {os.cpu_count()} CPUs, kernel {os.uname().release}; {a.namespaces} namespaces x "
          f"{a.listeners} TCP listeners, plus the host's")
    print()
    print("| measure | value | target |")
    print("|---|---:|---|")
    print(f"| idle CPU, % of one core ({a.idle_seconds:.0f} s) | {idle:.3f} | < 1 |")
    print(f"| threads | {threads} | bounded |")
    print(f"| open descriptors | {fds} | |")
    missed = sum(1 for l in latencies if l is None)
    got = sorted(l for l in latencies if l is not None)
    if got:
        print(f"| new namespace picked up, median (s) | {statistics.median(got):.3f} | < 2 |")
        print(f"| new namespace picked up, max (s) | {got[-1]:.3f} | < 2 |")
    print(f"| new namespaces missed | {missed} of {a.rounds} | 0 |")


if __name__ == "__main__":
    main()
