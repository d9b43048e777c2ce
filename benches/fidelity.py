#!/usr/bin/env python3
"""What `portwatch watch` catches and what it costs (make bench-fidelity).

1. Idle CPU: `portwatch watch` (default settings, then --hf) with 10 listeners open and nothing
   changing, CPU time of all its threads (/proc/PID/task/*/schedstat, ns) over IDLE_SECONDS,
   as % of one core.
2. Catch rate by lifetime: N listeners (TCP and UDP), each in its own short-lived process that
   binds, holds for L ms, closes and exits at once; an open counts only with that process's
   pid, a close only for that port. Default settings at 250 ms; --hf at 50, 20, 10, 5 ms.
3. Close latency: grace 0, destroy events on: time from close() to the close line on stdout.
4. The reference report's failing case: 20 listeners living 50 ms started 10 ms apart
   (BURST_COUNT=20 HOLD_MS=50 INTERVAL_S=0.01), TCP and UDP, in --hf.

Usage: fidelity.py [--portwatch PATH] [--count N] [--idle-seconds S]
"""

import argparse
import os
import socket
import statistics
import sys
import time

from pwbench import Watch



def listener_process(proto, hold_ms):
    """Forks a process that binds a listener, holds it, closes it and exits at once.
    Returns (pid, port)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        if proto == "tcp":
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen()
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
        os.write(w, str(s.getsockname()[1]).encode())
        os.close(w)
        time.sleep(hold_ms / 1000.0)
        s.close()
        os._exit(0)
    os.close(w)
    port = int(os.read(r, 16))
    os.close(r)
    return pid, port


def caught(watch, spawned, settle=1.0):
    """Fraction of (pid, port) listeners with an open carrying that pid, and with a close."""
    time.sleep(settle)  # let the last closes (and any grace) arrive
    events = [e for _, e in watch.snapshot()]
    opened = sum(1 for pid, port, proto in spawned if any(
        e["event"] == "open" and e["port"] == port and e["proto"] == proto and pid in e["pids"]
        for e in events))
    closed = sum(1 for pid, port, proto in spawned if any(
        e["event"] == "close" and e["port"] == port and e["proto"] == proto for e in events))
    return opened / len(spawned), closed / len(spawned)


def lifetimes(binary, args, hold_ms, count, gap_ms):
    w = Watch(binary, ["--no-initial", "-4", *args])
    w.ready()
    spawned = []
    for i in range(count):
        proto = "tcp" if i % 2 == 0 else "udp"
        pid, port = listener_process(proto, hold_ms)
        spawned.append((pid, port, proto))
        time.sleep(gap_ms / 1000.0)
    for pid, _, _ in spawned:
        os.waitpid(pid, 0)
    result = caught(w, spawned)
    w.stop()
    return result


def idle_cpu(binary, args, seconds):
    holders = [socket.socket() for _ in range(10)]
    for s in holders:
        s.bind(("127.0.0.1", 0))
        s.listen()
    w = Watch(binary, args)
    w.ready()
    time.sleep(1.0)
    c0, t0 = w.cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    c1, t1 = w.cpu_seconds(), time.monotonic()
    w.stop()
    for s in holders:
        s.close()
    return 100.0 * (c1 - c0) / (t1 - t0)


def close_latency(binary, runs):
    w = Watch(binary, ["--close-grace", "0", "--no-initial", "-t"])
    w.ready()
    lat = []
    for _ in range(runs):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        if not w.wait_for(lambda e: e["port"] == port and e["event"] == "open"):
            sys.exit("open not reported")
        t = time.monotonic()
        s.close()
        hit = w.wait_for(lambda e: e["port"] == port and e["event"] == "close")
        lat.append((hit[0] - t) * 1000.0 if hit else float("inf"))
    w.stop()
    return lat


def reference_burst(binary):
    w = Watch(binary, ["--hf", "--no-initial", "-4"])
    w.ready()
    spawned = []
    for proto in ("tcp", "udp"):
        for _ in range(20):  # BURST_COUNT=20 HOLD_MS=50 INTERVAL_S=0.01
            pid, port = listener_process(proto, 50)
            spawned.append((pid, port, proto))
            time.sleep(0.01)
    for pid, _, _ in spawned:
        os.waitpid(pid, 0)
    result = caught(w, spawned)
    w.stop()
    return result, len(spawned)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--portwatch", default="target/release/portwatch")
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--idle-seconds", type=float, default=20.0)
    a = ap.parse_args()
    b = a.portwatch
    print(f"# {os.cpu_count()} CPUs, kernel {os.uname().release}, uid {os.geteuid()}, "
          f"{a.count} listeners per row (half TCP, half UDP)\n")

    print("| settings | idle CPU, % of one core (10 listeners) | target |")
    print("|---|---:|---|")
    print(f"| default | {idle_cpu(b, [], a.idle_seconds):.4f} | < 0.1 |")
    print(f"| --hf | {idle_cpu(b, ['--hf'], a.idle_seconds):.3f} | < 2 |")
    print()

    print("| settings | listener lifetime | opens caught with pid | closes caught | target |")
    print("|---|---:|---:|---:|---|")
    o, c = lifetimes(b, [], 250, a.count // 2, 30)
    print(f"| default | 250 ms | {o:.1%} | {c:.1%} | 100% |")
    for hold in (50, 20, 10, 5):
        o, c = lifetimes(b, ["--hf"], hold, a.count, 7)
        target = "100%" if hold >= 10 else "(reported)"
        print(f"| --hf | {hold} ms | {o:.1%} | {c:.1%} | {target} |")
    print()

    lat = close_latency(b, 30)
    print(f"close latency with destroy events, grace 0 (30 closes): median "
          f"{statistics.median(lat):.2f} ms, max {max(lat):.2f} ms (target < 50 ms)")
    (o, c), n = reference_burst(b)
    print(f"reference burst case in --hf ({n} listeners, TCP and UDP): opens with pid {o:.0%}, "
          f"closes {c:.0%} (target 100%)")


if __name__ == "__main__":
    main()
