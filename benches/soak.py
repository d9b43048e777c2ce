#!/usr/bin/env python3
"""Churn soak (make soak DURATION=60 RATE=200 SOURCE=scan): nothing lost, memory flat, no errors.

While `portwatch watch --format json` runs (SOURCE=scan: `--source scan --hf`, as before the
eBPF source; SOURCE=ebpf: `--source ebpf` at default settings), a generator forks a
short-lived process every 1/RATE s. Each binds one listener (TCP or UDP, alternating) on 127.0.0.1, on the next port of
20000-29999 in turn (so a port is reused only after 10 000 listeners, far outside the close
grace), holds it 50-150 ms, closes it and exits. At the end every generated listener must have
exactly one open event carrying its pid and exactly one close event carrying it (pid_max
may be 32768, so a (pid, proto, port) can recur within a run at high rates: each key must then
have as many opens and closes as listeners were generated with it); portwatch's RSS is read
at the start and the end, its peak (VmHWM) at the end; its CPU in ns (schedstat) and in clock
ticks (utime+stime); its stderr must hold no ERROR line.

One Python generator forks ~900 children a second here and two cores fork ~1200 a second
in all, so WORKERS processes (one per 400 forks/s) share the schedule, and with PER_PROCESS
> 1 each forked process opens that many listeners in turn (listener i still opens at i/RATE s
and lives 50-150 ms; each still has its process's pid).

With --scrape S (make soak SCRAPE=0.2), portwatch also serves `--metrics` and a thread
scrapes /metrics every S seconds through the churn: every scrape must succeed, and once the
churn is over the metrics must agree with the event stream: the opens and closes counted in
portwatch_events_total grew by the open and close events written, and (opens - closes) grew
by as much as portwatch_listening's total, no event dropped.

Usage: soak.py [--portwatch PATH] [--duration S] [--rate N] [--source scan|ebpf|auto]
               [--per-process K] [--workers N] [--scrape S]
"""

import argparse
import collections
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

from pwbench import cpu_seconds, cpu_ticks, free_port, scrape, status_kib, total

BASE, SPAN = 20000, 10000


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Scraper:
    """Scrapes `url` every `every` seconds until stopped: how many, how many failed, the
    slowest."""

    def __init__(self, url, every):
        self.url, self.every = url, every
        self.count, self.failed, self.slowest, self.errors = 0, 0, 0.0, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.wait(self.every):
            t = time.monotonic()
            try:
                scrape(self.url)
            except Exception as e:  # any failure is what this counts
                self.failed += 1
                self.errors.append(str(e))
            self.count += 1
            self.slowest = max(self.slowest, time.monotonic() - t)

    def finish(self):
        self.stop.set()
        self.thread.join()


def child(listeners, start):
    """In the forked child: for each (proto, port, open at, hold) bind at its time, hold,
    close; exit at once after the last. Exit status 1 if any could not bind."""
    actions = sorted([(at, 0, j) for j, (_, _, at, _) in enumerate(listeners)]
                     + [(at + hold, 1, j) for j, (_, _, at, hold) in enumerate(listeners)])
    socks, ok = {}, True
    for at, what, j in actions:
        delay = start + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        proto, port, _, _ = listeners[j]
        if what == 1:
            if j in socks:
                socks.pop(j).close()
            continue
        try:
            if proto == "tcp":
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", port))
                s.listen()
            else:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind(("127.0.0.1", port))
            socks[j] = s
        except OSError:
            ok = False
    os._exit(0 if ok else 1)

def generate(k, workers, rate, per, duration, start):
    """Worker k of `workers`: forks processes k, k + workers, ... on the shared schedule until
    `duration` has passed; process p opens listeners p*per .. p*per+per-1, listener i at
    i/rate s. Returns ([(pid, proto, port) of each listener of the processes that bound all
    of theirs], processes that failed)."""
    spawned = {}  # pid -> [(proto, port)], of the processes not yet reaped
    generated = []
    pending = collections.deque()  # (when it should have exited, pid), in start order
    failed = 0
    period = 1.0 / rate
    p = k
    while True:
        first = p * per
        delay = start + first * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if time.monotonic() - start >= duration:
            break
        listeners = []
        for i in range(first, first + per):
            listeners.append(("tcp" if i % 2 == 0 else "udp", BASE + i % (SPAN - 100),
                              i * period, random.uniform(0.05, 0.15)))
        pid = os.fork()
        if pid == 0:
            child(listeners, start)
        spawned[pid] = [(proto, port) for proto, port, _, _ in listeners]
        pending.append((start + max(at + hold for _, _, at, hold in listeners) + 0.05, pid))
        p += workers
        # Reap the processes that exited, keeping the ones that could not bind out of the count.
        while pending and pending[0][0] <= time.monotonic():
            _, done = pending.popleft()
            _, status = os.waitpid(done, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                failed += 1
            else:
                generated += [(done, proto, port) for proto, port in spawned[done]]
            spawned.pop(done)
    for _, pid in pending:
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            failed += 1
        else:
            generated += [(pid, proto, port) for proto, port in spawned[pid]]
    return generated, failed

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--portwatch", default="target/release/portwatch")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--per-process", type=int, default=1,
                    help="listeners per forked process, opened in turn on the schedule")
    ap.add_argument("--workers", type=int, default=0,
                    help="generator processes (default: one per 400 forks/s, at least 1)")
    ap.add_argument("--source", choices=["scan", "ebpf", "auto"], default="scan")
    ap.add_argument("--scrape", type=float, default=0.0,
                    help="serve --metrics and scrape it every S seconds during the churn")
    a = ap.parse_args()
    a.workers = a.workers or max(1, -(-int(a.rate / a.per_process) // 400))
    settings = ["--source", "scan", "--hf"] if a.source == "scan" else ["--source", a.source]
    url = None
    if a.scrape:
        port = free_port()
        settings += ["--metrics", f"127.0.0.1:{port}"]
        url = f"http://127.0.0.1:{port}/metrics"

    # An anonymous file: nothing at a predictable path for another user to redirect.
    err = tempfile.TemporaryFile("w+")
    w = subprocess.Popen(
        [a.portwatch, "watch", *settings, "--format", "json", "--no-initial", "-4",
         "-p", f"{BASE}-{BASE + SPAN - 1}"],
        stdout=subprocess.PIPE, stderr=err, text=True, env={**os.environ, "RUST_LOG": "warn"})
    # Raw lines, parsed at the end: at thousands of events a second the generator needs the
    # GIL more than the reader does.
    events = []
    threading.Thread(target=lambda: events.extend(w.stdout), daemon=True).start()

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
    if url:
        before = scrape(url)
        scraper = Scraper(url, a.scrape)

    rss_start, cpu_start, ticks_start = rss_kib(w.pid), cpu_seconds(w.pid), cpu_ticks(w.pid)
    peak_start = status_kib(w.pid, "VmHWM")
    # WORKERS generator processes share the schedule (listener i starts at i/RATE s, by
    # worker i % WORKERS): one Python process forks ~900 children a second on this machine.
    start = time.monotonic() + 0.2
    outs = []
    for k in range(a.workers):
        out = tempfile.TemporaryFile("w+")
        wpid = os.fork()
        if wpid == 0:
            try:
                generated, failed = generate(k, a.workers, a.rate, a.per_process, a.duration, start)
                json.dump({"generated": generated, "failed": failed}, out)
                out.flush()
            finally:
                os._exit(0)
        outs.append((wpid, out))
    generated, failed = [], 0
    for wpid, out in outs:
        os.waitpid(wpid, 0)
        out.seek(0)
        r = json.load(out)
        out.close()
        generated += [tuple(g) for g in r["generated"]]
        failed += r["failed"]
    elapsed = time.monotonic() - start
    time.sleep(1.5)  # the last closes, past the 200 ms grace
    rss_end, cpu_end, ticks_end = rss_kib(w.pid), cpu_seconds(w.pid), cpu_ticks(w.pid)
    rss_peak = status_kib(w.pid, "VmHWM")
    if url:
        scraper.finish()
        after = scrape(url)
    w.send_signal(signal.SIGTERM)
    w.wait(timeout=10)
    time.sleep(0.2)

    events = [json.loads(l) for l in events]
    opens, closes = {}, {}
    for e in events:
        for pid in e.get("pids", []):
            key = (pid, e["proto"], e["port"])
            if e["event"] == "open":
                opens[key] = opens.get(key, 0) + 1
            elif e["event"] == "close":
                closes[key] = closes.get(key, 0) + 1
    expected = collections.Counter(generated)
    bad, missed_open, missed_close, dup_open, dup_close = [], 0, 0, 0, 0
    for key, k in expected.items():
        o, c = opens.get(key, 0), closes.get(key, 0)
        missed_open += max(0, k - o)
        missed_close += max(0, k - c)
        dup_open += max(0, o - k)
        dup_close += max(0, c - k)
        if (o, c) != (k, k):
            bad.append((*key, o, c, k))
    good = sum(k for key, k in expected.items() if (opens.get(key, 0), closes.get(key, 0)) == (k, k))
    recurring = sum(k - 1 for k in expected.values())
    n = len(generated)
    owners = sum(1 for e in events if e["event"] == "owners")
    err.seek(0)
    log = err.read().splitlines()
    err.close()
    errors = [l for l in log if " ERROR" in l]
    warns = [l for l in log if " WARN" in l]

    print(f"# {os.cpu_count()} CPUs, kernel {os.uname().release}; {a.duration:.0f} s at {a.rate:.0f} "
          f"listeners/s, {a.per_process} per process ({a.workers} generator processes); portwatch watch {' '.join(settings)}")
    print()
    print("| measure | value | target |")
    print("|---|---:|---|")
    print(f"| listeners generated | {n} ({n / elapsed:.0f}/s) | >= {a.rate:.0f}/s |")
    print(f"| processes ({a.per_process} listener(s) each) with a failed bind (not counted) "
          f"| {failed} | |")
    print(f"| (pid, proto, port) seen again within the run (pid and port reuse) | {recurring} | |")
    print(f"| with exactly one open (with pid) and one close | {good} | all |")
    print(f"| opens missed / duplicated | {missed_open} / {dup_open} | 0 / 0 |")
    print(f"| closes missed / duplicated | {missed_close} / {dup_close} | 0 / 0 |")
    print(f"| events in all / owner-change events | {len(events)} / {owners} | {2 * n} / 0 |")
    print(f"| RSS start / end (KiB) | {rss_start} / {rss_end} | flat |")
    print(f"| peak RSS (VmHWM) before / after the churn (KiB) | {peak_start} / {rss_peak} | |")
    print(f"| CPU during the soak, % of one core | {100 * (cpu_end - cpu_start) / elapsed:.1f} | |")
    print(f"| CPU during the soak, utime+stime ticks | {ticks_end - ticks_start} "
          f"({os.sysconf('SC_CLK_TCK')} Hz) | |")
    print(f"| log lines at ERROR / WARN | {len(errors)} / {len(warns)} | 0 / - |")
    for b in bad[:10]:
        print(f"wrong: pid {b[0]} {b[1]} {b[2]}: {b[3]} opens, {b[4]} closes, {b[5]} expected")
    for l in (errors + warns)[:5]:
        print(f"log: {l}")
    ok = not bad and not errors and n / elapsed >= a.rate * 0.95
    if url:
        def grew(name, **labels):
            return int(total(after, name, **labels) - total(before, name, **labels))
        m_open, m_close = grew("portwatch_events_total", event="open"), grew("portwatch_events_total", event="close")
        e_open = sum(1 for e in events if e["event"] == "open")
        e_close = sum(1 for e in events if e["event"] == "close")
        listening = grew("portwatch_listening")
        dropped = int(total(after, "portwatch_events_dropped_total"))
        print(f"| scrapes every {a.scrape} s during the churn / failed / slowest (ms) "
              f"| {scraper.count} / {scraper.failed} / {1000 * scraper.slowest:.1f} | - / 0 / - |")
        print(f"| portwatch_events_total open / close grew by | {m_open} / {m_close} "
              f"| {e_open} / {e_close} (events written) |")
        print(f"| (opens - closes) grew by / portwatch_listening total grew by "
              f"| {m_open - m_close} / {listening} | equal |")
        print(f"| portwatch_events_dropped_total / kernel_events_lost_total "
              f"| {dropped} / {int(total(after, 'portwatch_kernel_events_lost_total'))} | 0 / - |")
        print(f"| scans by reason during the soak | "
              + ", ".join(f"{r} {grew('portwatch_scans_total', reason=r)}"
                          for r in ("start", "interval", "reconcile", "resync", "namespace"))
              + " | |")
        for e in scraper.errors[:5]:
            print(f"scrape failed: {e}")
        ok = ok and scraper.failed == 0 and (m_open, m_close) == (e_open, e_close) \
            and m_open - m_close == listening and dropped == 0
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
