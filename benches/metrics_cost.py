#!/usr/bin/env python3
"""What `watch --metrics` costs (make bench-metrics): idle CPU and memory, and one scrape.

Idle: three `portwatch watch` processes run side by side for IDLE seconds after a 2 s warm-up,
with the same settings (SOURCE): one without --metrics, one with --metrics that nobody
scrapes, one scraped every SCRAPE_EVERY s (Prometheus's default is 15 s). For each: the CPU
time of all its threads (/proc/PID/task/*/schedstat) as % of one core, its RSS at the end and
its peak (VmHWM), its threads.

Scrape: LISTENERS TCP listeners on 127.0.0.1, ports 15000 and up, held by PROCESSES forked
processes, under a watcher that watches only those ports (`-p`); once a scrape lists them
all, RUNS scrapes of /metrics are timed one after another (wall time of an HTTP GET over
loopback, connection to last byte, in this script), for each label set (full, minimal). The
Prometheus text format; the body size is reported too, and the watcher's RSS before the
first scrape and after the last (what scrapes leave with the allocator).

Usage: metrics_cost.py [--portwatch PATH] [--source scan|ebpf|auto] [--idle S]
                       [--scrape-every S] [--listeners N] [--processes N] [--runs N]
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
import urllib.request

from compare import release, spawn_holders
from pwbench import cpu_seconds, free_port, scrape, status_kib, total


# The scrape's listeners: below the ephemeral range and the tests' sentinel ports, and the
# watcher timed watches only these, so listeners other programs hold do not count.
BASE = 15000


def start(binary, source, metrics=None, labels="full", ports=None):
    args = [binary, "watch", "--source", source, "--format", "json"]
    if ports:
        args += ["-p", ports]
    url = None
    if metrics:
        port = free_port()
        args += ["--metrics", f"127.0.0.1:{port}", "--metrics-labels", labels]
        url = f"http://127.0.0.1:{port}/metrics"
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if url:
        deadline = time.monotonic() + 10
        while True:
            try:
                scrape(url)
                break
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit("the metrics endpoint never answered")
                time.sleep(0.05)
    return p, url


def idle(a):
    watchers = {
        "without --metrics": start(a.portwatch, a.source),
        "--metrics, not scraped": start(a.portwatch, a.source, metrics=True),
        f"--metrics, scraped every {a.scrape_every:g} s": start(a.portwatch, a.source, metrics=True),
    }
    time.sleep(2)
    cpu0 = {k: cpu_seconds(p.pid) for k, (p, _) in watchers.items()}
    t0 = time.monotonic()
    scraped = list(watchers.values())[2][1]
    scrapes = 0
    while time.monotonic() - t0 < a.idle:
        time.sleep(min(a.scrape_every, max(0.0, a.idle - (time.monotonic() - t0))))
        if time.monotonic() - t0 < a.idle:
            scrape(scraped)
            scrapes += 1
    elapsed = time.monotonic() - t0
    print(f"Idle, {elapsed:.0f} s, --source {a.source}, {scrapes} scrapes of the third:")
    print()
    print("| watcher | CPU, % of one core | RSS (KiB) | peak RSS (KiB) | threads |")
    print("|---|---:|---:|---:|---:|")
    for k, (p, _) in watchers.items():
        cpu = 100 * (cpu_seconds(p.pid) - cpu0[k]) / elapsed
        threads = len(os.listdir(f"/proc/{p.pid}/task"))
        print(f"| {k} | {cpu:.3f} | {status_kib(p.pid, 'VmRSS')} | "
              f"{status_kib(p.pid, 'VmHWM')} | {threads} |")
    for p, _ in watchers.values():
        p.terminate()
        p.wait(timeout=10)
    print()


def timed_get(url):
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as r:
        body = r.read()
    return (time.perf_counter() - t) * 1000.0, len(body)


def scrape_time(a):
    ports, pids, release_w = spawn_holders(a.listeners, a.processes, base=BASE)
    try:
        print(f"One scrape with {a.listeners} listeners held by {a.processes} processes, "
              f"{a.runs} scrapes each:")
        print()
        print("| labels | series | body (KiB) | median ms | min | max | RSS before / after (KiB) |")
        print("|---|---:|---:|---:|---:|---:|---|")
        for labels in ("full", "minimal"):
            p, url = start(a.portwatch, a.source, metrics=True, labels=labels,
                           ports=f"{BASE}-{BASE + a.listeners - 1}")
            deadline = time.monotonic() + 30
            while total(scrape(url), "portwatch_listening") < a.listeners:
                if time.monotonic() > deadline:
                    sys.exit("the scrape never listed every listener")
                time.sleep(0.1)
            samples = scrape(url)
            series = sum(1 for (n, _) in samples if n == "portwatch_listening")
            times, size, rss = [], 0, status_kib(p.pid, "VmRSS")
            for _ in range(a.runs):
                ms, size = timed_get(url)
                times.append(ms)
            print(f"| {labels} | {series} | {size / 1024:.0f} | {statistics.median(times):.2f} | "
                  f"{min(times):.2f} | {max(times):.2f} | {rss} / {status_kib(p.pid, 'VmRSS')} |")
            p.terminate()
            p.wait(timeout=10)
    finally:
        release(release_w, pids)
    print()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--portwatch", default="target/release/portwatch")
    ap.add_argument("--source", choices=["scan", "ebpf", "auto"], default="auto")
    ap.add_argument("--idle", type=float, default=60.0)
    ap.add_argument("--scrape-every", type=float, default=15.0)
    ap.add_argument("--listeners", type=int, default=1000)
    ap.add_argument("--processes", type=int, default=200)
    ap.add_argument("--runs", type=int, default=50)
    a = ap.parse_args()
    print(f"# {os.cpu_count()} CPUs, kernel {os.uname().release}, {a.portwatch}")
    print()
    idle(a)
    scrape_time(a)


if __name__ == "__main__":
    main()
