#!/usr/bin/env python3
"""What `portwatch watch` catches and what it costs, per source (make bench-fidelity).

Each measurement runs for `--source scan` (default settings and --hf, as before the eBPF
source) and `--source ebpf` (default settings), side by side in one run.

1. Idle CPU: 10 TCP listeners open, nothing changing; the watchers (scan default, scan --hf,
   ebpf) run at the same time over the same IDLE_SECONDS window, after a 3 s warm-up. For
   each: CPU time of all its threads (/proc/PID/task/*/schedstat, ns) as % of one core, the
   utime+stime clock ticks (/proc/PID/stat), its wake-ups (context switches of all threads)
   and the lines it printed in the window (listeners of other processes on the host).
2. Catch rate by lifetime: N listeners, each in its own short-lived process that binds, holds
   for L ms, closes and exits at once. scan: IPv4, TCP and UDP alternating; default settings
   at 250 ms, --hf at 50, 20, 10, 5 ms. ebpf: TCP/UDP x IPv4/IPv6 in turn, at 0, 1, 5, 10,
   20, 50 and 250 ms. An open counts only with that process's pid; "exact" when the pids are
   just that one; a close counts for that port. Duplicates: more than one open with the pid
   or more than one close for one listener. Then again with BUSY (default 2 x nproc) busy
   loops (`python3 -c 'while True: pass'`, normal priority) running: every core kept busy.
3. Open latency: the child takes time.time() just before listen() (TCP) or bind() (UDP) and
   sends it back; the latency is the wall time at which the open line is read from the
   watcher's stdout minus that. p50/p99/max over every open of the catch-rate rows. Also
   the event's `ts` (kernel event time, ms resolution) minus the call time. A control row:
   the same call time to when this script reads the child's pipe write (a wake-up of this
   script's own process under the same load, no watcher involved).
4. Close latency: grace 0 (scan: with destroy events): time from close() to the close line.
5. The reference report's failing case: 20 listeners living 50 ms started 10 ms apart
   (BURST_COUNT=20 HOLD_MS=50 INTERVAL_S=0.01), TCP and UDP (scan: in --hf).

Usage: fidelity.py [--portwatch PATH] [--count N] [--idle-seconds S] [--source scan,ebpf]
                   [--busy N]
"""

import argparse
import datetime
import os
import socket
import statistics
import subprocess
import sys
import time

from pwbench import Watch

SCAN = ["--source", "scan"]
EBPF = ["--source", "ebpf"]
HOPS = []  # ms from a child's call to this script reading its pipe write: the control
COMBOS = [("tcp", "ipv4"), ("udp", "ipv4"), ("tcp", "ipv6"), ("udp", "ipv6")]


def listener_process(proto, family, hold_ms):
    """Forks a process that binds a listener, holds it, closes it and exits at once.
    Returns (pid, port, wall time just before its listen()/bind())."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            fam, addr = ((socket.AF_INET6, "::1") if family == "ipv6"
                         else (socket.AF_INET, "127.0.0.1"))
            if proto == "tcp":
                s = socket.socket(fam, socket.SOCK_STREAM)
                s.bind((addr, 0))
                t = time.time()
                s.listen()
            else:
                s = socket.socket(fam, socket.SOCK_DGRAM)
                t = time.time()
                s.bind((addr, 0))
            msg = f"{s.getsockname()[1]} {t!r}".encode()
            if hold_ms:
                os.write(w, msg)
                time.sleep(hold_ms / 1000.0)
                s.close()
            else:  # 0 ms: closed right after the call, before anything else
                s.close()
                os.write(w, msg)
        finally:
            os._exit(0)
    os.close(w)
    port, t = os.read(r, 64).split()
    hop = time.time() - float(t)  # call to this script woken by the child's pipe write
    os.close(r)
    return pid, int(port), float(t), hop


def ts_seconds(ts):
    return datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def tally(watch, spawned, settle=1.0):
    """Per row: opens with the pid, with exactly that pid, closes, duplicates, and per caught
    open (read time - call, ts - call) in ms."""
    time.sleep(settle)  # let the last closes (and any grace) arrive
    by_key = {}
    for wall, e in watch.snapshot_wall():
        by_key.setdefault((e["event"], e["proto"], e["family"], e["port"]), []).append((wall, e))
    r = {"n": len(spawned), "open": 0, "exact": 0, "close": 0, "dup": 0, "lat": [], "ts": [],
         "missed": []}
    for pid, port, proto, family, t_call in spawned:
        opens = [(w, e) for w, e in by_key.get(("open", proto, family, port), [])
                 if pid in e["pids"]]
        closes = [(w, e) for w, e in by_key.get(("close", proto, family, port), [])
                  if pid in e["pids"] or not e["pids"]]
        if opens:
            r["open"] += 1
            r["exact"] += opens[0][1]["pids"] == [pid]
            r["lat"].append((opens[0][0] - t_call) * 1000.0)
            r["ts"].append((ts_seconds(opens[0][1]["ts"]) - t_call) * 1000.0)
        else:
            others = by_key.get(("open", proto, family, port), [])
            r["missed"].append((pid, proto, family, port, [e["pids"] for _, e in others]))
        r["close"] += bool(closes)
        r["dup"] += len(opens) > 1 or len(closes) > 1
    return r


def lifetimes(binary, args, hold_ms, count, gap_ms, combos):
    w = Watch(binary, ["--no-initial", *args])
    w.ready()
    spawned = []
    for i in range(count):
        proto, family = combos[i % len(combos)]
        pid, port, t, hop = listener_process(proto, family, hold_ms)
        spawned.append((pid, port, proto, family, t))
        HOPS.append(hop * 1000.0)
        time.sleep(gap_ms / 1000.0)
    for pid, *_ in spawned:
        os.waitpid(pid, 0)
    result = tally(w, spawned)
    w.stop()
    return result


def pct(x, n):
    return f"{100.0 * x / n:.1f}%" if n else "-"


def quantile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def idle_side_by_side(binary, configs, seconds):
    """configs: [(label, args)]. All watchers run over the same idle window."""
    holders = [socket.socket() for _ in range(10)]
    for s in holders:
        s.bind(("127.0.0.1", 0))
        s.listen()
    watches = []
    for label, args in configs:
        w = Watch(binary, args)
        w.ready()
        watches.append((label, w))
    time.sleep(3.0)  # past the 1 s owner re-check of the last sentinel

    def switches(pid):
        n = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    for line in f:
                        if "ctxt_switches" in line:
                            n += int(line.split()[1])
            except OSError:
                pass
        return n

    before = [(w.cpu_seconds(), w.cpu_ticks(), switches(w.p.pid), len(w.snapshot()))
              for _, w in watches]
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    rows = []
    for (label, w), (c0, k0, s0, n0) in zip(watches, before):
        rows.append((label, 100.0 * (w.cpu_seconds() - c0) / elapsed, w.cpu_ticks() - k0,
                     (switches(w.p.pid) - s0) / elapsed, len(w.snapshot()) - n0))
    for _, w in watches:
        w.stop()
    for s in holders:
        s.close()
    return rows, elapsed


def close_latency(binary, args, runs):
    w = Watch(binary, ["--close-grace", "0", "--no-initial", "-t", *args])
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


def reference_burst(binary, args):
    w = Watch(binary, ["--no-initial", "-4", *args])
    w.ready()
    spawned = []
    for proto in ("tcp", "udp"):
        for _ in range(20):  # BURST_COUNT=20 HOLD_MS=50 INTERVAL_S=0.01
            pid, port, t, _ = listener_process(proto, "ipv4", 50)
            spawned.append((pid, port, proto, "ipv4", t))
            time.sleep(0.01)
    for pid, *_ in spawned:
        os.waitpid(pid, 0)
    r = tally(w, spawned)
    w.stop()
    return r


class Busy:
    """N busy-loop processes at normal priority, stopped by their pids."""

    def __init__(self, n):
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                      for _ in range(n)]
        time.sleep(0.5)

    def stop(self):
        for p in self.procs:
            p.kill()
            p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--portwatch", default="target/release/portwatch")
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--idle-seconds", type=float, default=60.0)
    ap.add_argument("--source", default="scan,ebpf",
                    help="comma-separated sources to measure: scan, ebpf (default both)")
    ap.add_argument("--busy", type=int, default=2 * os.cpu_count(),
                    help="busy-loop processes for the loaded run (0: no loaded run)")
    a = ap.parse_args()
    b = a.portwatch
    sources = [s.strip() for s in a.source.split(",") if s.strip()]
    if set(sources) - {"scan", "ebpf"}:
        sys.exit("--source takes scan, ebpf or both")
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"# {datetime.date.today()}, {os.cpu_count()} CPUs, kernel {os.uname().release}, "
          f"uid {os.geteuid()}, load average before {load}; {a.count} listeners per row, "
          f"clock tick {os.sysconf('SC_CLK_TCK')} Hz\n")

    configs = []
    if "scan" in sources:
        configs += [("scan, default", SCAN), ("scan, --hf", SCAN + ["--hf"])]
    if "ebpf" in sources:
        configs += [("ebpf, default", EBPF)]
    rows, elapsed = idle_side_by_side(b, configs, a.idle_seconds)
    print(f"Idle, 10 listeners, all watchers side by side over the same {elapsed:.0f} s:\n")
    print("| source, settings | CPU, % of one core | utime+stime ticks | wake-ups/s | "
          "lines printed (others' listeners) | target |")
    print("|---|---:|---:|---:|---:|---|")
    targets = {"scan, default": "< 0.1%", "scan, --hf": "< 2%", "ebpf, default": "0 ticks"}
    for label, cpu, ticks, wakes, lines in rows:
        print(f"| {label} | {cpu:.4f} | {ticks} | {wakes:.1f} | {lines} | {targets[label]} |")
    print()

    runs = [("idle", None)]
    if a.busy:
        runs.append((f"{a.busy} busy loops", a.busy))
    table, latency, missed = [], [], []
    for load_label, nbusy in runs:
        busy = Busy(nbusy) if nbusy else None
        try:
            plan = []
            if "scan" in sources:
                if not nbusy:
                    plan.append(("scan, default", SCAN + ["-4"], 250, a.count // 2, 30,
                                 COMBOS[:2], "100%"))
                for hold in ((50, 20, 10, 5) if not nbusy else (10,)):
                    plan.append(("scan, --hf", SCAN + ["--hf", "-4"], hold, a.count, 7,
                                 COMBOS[:2], "100%" if hold >= 10 and not nbusy else "(reported)"))
            if "ebpf" in sources:
                for hold in (0, 1, 5, 10, 20, 50, 250):
                    plan.append(("ebpf, default", EBPF, hold, a.count, 30 if hold >= 250 else 7,
                                 COMBOS, "100%"))
            lat_by = {}
            HOPS.clear()
            for label, args, hold, count, gap, combos, target in plan:
                r = lifetimes(b, args, hold, count, gap, combos)
                table.append((label, load_label, hold, r, target))
                lat_by.setdefault(label, ([], []))
                lat_by[label][0].extend(r["lat"])
                lat_by[label][1].extend(r["ts"])
                missed += [(label, load_label, hold, m) for m in r["missed"]]
            for label, (lat, ts) in lat_by.items():
                latency.append((label, load_label, lat, ts))
            latency.append(("control: child's pipe write to this script", load_label,
                            list(HOPS), []))
        finally:
            if busy:
                busy.stop()

    print("| source, settings | load | lifetime | listeners | opens with the pid | pid exact | "
          "closes | duplicates | target |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for label, load_label, hold, r, target in table:
        print(f"| {label} | {load_label} | {hold} ms | {r['n']} | {pct(r['open'], r['n'])} | "
              f"{pct(r['exact'], r['n'])} | {pct(r['close'], r['n'])} | {r['dup']} | {target} |")
    print()
    print("Open latency, line read on stdout minus the time just before listen()/bind(), ms; "
          "and the event's ts minus that time (ts has ms resolution):\n")
    print("| source, settings | load | opens | p50 | p99 | max | ts - call, p50 / max | target |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for label, load_label, lat, ts in latency:
        target = "p99 <= 5 ms" if label.startswith("ebpf") else "(reported)"
        if not ts:
            ts = [float("nan")]
        print(f"| {label} | {load_label} | {len(lat)} | {quantile(lat, 0.5):.2f} | "
              f"{quantile(lat, 0.99):.2f} | {max(lat, default=float('nan')):.2f} | "
              f"{quantile(ts, 0.5):.1f} / {max(ts, default=float('nan')):.1f} | {target} |")
    print()
    for label, load_label, hold, m in missed[:20]:
        print(f"missed ({label}, {load_label}, {hold} ms): pid {m[0]} {m[1]} {m[2]} port {m[3]}; "
              f"opens of that port carried pids {m[4]}")
    if missed:
        print()

    for label, args in (("scan, destroy events", SCAN), ("ebpf", EBPF)):
        if label.split(",")[0] not in sources:
            continue
        lat = close_latency(b, args, 30)
        print(f"close latency, {label}, grace 0 (30 closes): median "
              f"{statistics.median(lat):.2f} ms, max {max(lat):.2f} ms (target < 50 ms)")
    for label, args in (("scan, --hf", SCAN + ["--hf"]), ("ebpf", EBPF)):
        if label.split(",")[0] not in sources:
            continue
        r = reference_burst(b, args)
        print(f"reference burst case, {label} ({r['n']} listeners, TCP and UDP): opens with pid "
              f"{pct(r['open'], r['n'])}, closes {pct(r['close'], r['n'])}, duplicates "
              f"{r['dup']} (target 100%)")


if __name__ == "__main__":
    main()
