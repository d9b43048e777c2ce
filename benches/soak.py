#!/usr/bin/env python3
"""Churn soak (make soak DURATION=60): nothing lost, memory flat, no errors.

While `portwatch watch --hf --format json` runs, a generator forks a short-lived process every
1/RATE s. Each binds one listener (TCP or UDP, alternating) on 127.0.0.1, on the next port of
20000-29999 in turn (so a port is reused only after 10 000 listeners, far outside the close
grace), holds it 50-150 ms, closes it and exits. At the end every generated listener must have
exactly one open event carrying its pid and exactly one close event carrying it; portwatch's
RSS is read at the start and the end; its stderr must hold no ERROR line.

Usage: soak.py [--portwatch PATH] [--duration S] [--rate N]
"""

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import tempfile
import sys
import threading
import time

from pwbench import cpu_seconds

BASE, SPAN = 20000, 10000


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def child(proto, port, hold_s):
    """In the forked child: bind, hold, close, exit at once."""
    try:
        if proto == "tcp":
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen()
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", port))
        time.sleep(hold_s)
        s.close()
        os._exit(0)
    except OSError:
        os._exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--portwatch", default="target/release/portwatch")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=200.0)
    a = ap.parse_args()

    # An anonymous file: nothing at a predictable path for another user to redirect.
    err = tempfile.TemporaryFile("w+")
    w = subprocess.Popen(
        [a.portwatch, "watch", "--hf", "--format", "json", "--no-initial", "-4",
         "-p", f"{BASE}-{BASE + SPAN - 1}"],
        stdout=subprocess.PIPE, stderr=err, text=True, env={**os.environ, "RUST_LOG": "warn"})
    events = []
    threading.Thread(target=lambda: events.extend(json.loads(l) for l in w.stdout),
                     daemon=True).start()

    # Ready: a sentinel listener is reported. Each on its own port (the top 100 of the
    # range): one reopened on the same endpoint within the grace would be a silent restart.
    for attempt in range(100):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", BASE + SPAN - 1 - attempt))
        s.listen()
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline and not events:
            time.sleep(0.005)
        s.close()
        if events:
            break
    else:
        sys.exit("portwatch watch never reported the sentinel")
    time.sleep(0.5)
    events.clear()

    rss_start, cpu_start = rss_kib(w.pid), cpu_seconds(w.pid)
    spawned = {}  # pid -> (proto, port)
    pending = []  # (when it should have exited, pid), in start order
    reaped = set()
    failed = 0
    period = 1.0 / a.rate
    start = time.monotonic()
    n = 0
    while time.monotonic() - start < a.duration:
        proto = "tcp" if n % 2 == 0 else "udp"
        port = BASE + n % (SPAN - 100)
        hold = random.uniform(0.05, 0.15)
        pid = os.fork()
        if pid == 0:
            child(proto, port, hold)
        spawned[pid] = (proto, port)
        pending.append((time.monotonic() + hold + 0.05, pid))
        n += 1
        # Reap the generated processes that exited (never portwatch, also a child), keeping
        # the ones that could not bind out of the count.
        while pending and pending[0][0] <= time.monotonic():
            _, done = pending.pop(0)
            _, status = os.waitpid(done, 0)
            reaped.add(done)
            if os.waitstatus_to_exitcode(status) != 0:
                spawned.pop(done)
                failed += 1
        next_at = start + n * period
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    elapsed = time.monotonic() - start
    for pid in [p for p in spawned if p not in reaped]:
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            spawned.pop(pid)
            failed += 1
    time.sleep(1.5)  # the last closes, past the 200 ms grace
    rss_end, cpu_end = rss_kib(w.pid), cpu_seconds(w.pid)
    w.send_signal(signal.SIGTERM)
    w.wait(timeout=10)
    time.sleep(0.2)

    opens, closes = {}, {}
    for e in events:
        for pid in e.get("pids", []):
            key = (pid, e["proto"], e["port"])
            if e["event"] == "open":
                opens[key] = opens.get(key, 0) + 1
            elif e["event"] == "close":
                closes[key] = closes.get(key, 0) + 1
    bad = []
    for pid, (proto, port) in spawned.items():
        o, c = opens.get((pid, proto, port), 0), closes.get((pid, proto, port), 0)
        if (o, c) != (1, 1):
            bad.append((pid, proto, port, o, c))
    owners = sum(1 for e in events if e["event"] == "owners")
    err.seek(0)
    log = err.read().splitlines()
    err.close()
    errors = [l for l in log if " ERROR" in l]
    warns = [l for l in log if " WARN" in l]

    print(f"# {os.cpu_count()} CPUs, kernel {os.uname().release}; {a.duration:.0f} s at {a.rate:.0f} "
          f"listeners/s")
    print()
    print("| measure | value | target |")
    print("|---|---:|---|")
    print(f"| listeners generated (processes) | {len(spawned)} ({len(spawned) / elapsed:.0f}/s) | >= 200/s |")
    print(f"| listeners that could not bind (not counted) | {failed} | |")
    print(f"| with exactly one open (with pid) and one close | {len(spawned) - len(bad)} | all |")
    print(f"| owner-change events | {owners} | 0 |")
    print(f"| RSS start / end (KiB) | {rss_start} / {rss_end} | flat |")
    print(f"| CPU during the soak, % of one core | {100 * (cpu_end - cpu_start) / elapsed:.1f} | |")
    print(f"| log lines at ERROR / WARN | {len(errors)} / {len(warns)} | 0 / - |")
    for b in bad[:10]:
        print(f"missed: pid {b[0]} {b[1]} {b[2]}: {b[3]} opens, {b[4]} closes")
    for l in (errors + warns)[:5]:
        print(f"log: {l}")
    ok = not bad and not errors and len(spawned) / elapsed >= 200 * 0.95
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
