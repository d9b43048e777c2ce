"""What the benchmark scripts share: a running `portwatch watch` and reading its costs."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request


def cpu_seconds(pid):
    """CPU time of every thread of `pid`, in ns resolution (/proc/PID/task/*/schedstat)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass  # a thread that just exited
    return total / 1e9


def cpu_ticks(pid):
    """utime + stime of `pid` (all its threads) in clock ticks (/proc/PID/stat fields 14, 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def status_kib(pid, field):
    """A `kB` line of /proc/PID/status (VmRSS, VmHWM, ...)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url):
    """The samples of one /metrics scrape: {(name, labels text): value}."""
    with urllib.request.urlopen(url, timeout=5) as r:
        if r.status != 200:
            raise OSError(f"HTTP {r.status}")
        text = r.read().decode()
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        name, _, labels = series.partition("{")
        samples[(name, labels.rstrip("}"))] = float(value)
    return samples


def total(samples, name, **labels):
    """The sum of `name`'s samples whose labels include `labels`."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for (n, l), v in samples.items() if n == name and all(w in l for w in want))


class Watch:
    """A running `portwatch watch --format json`, its lines collected with arrival times."""

    def __init__(self, binary, args):
        self.p = subprocess.Popen([binary, "watch", "--format", "json", *args],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        # Each line with time.monotonic() at its read (self.events) and time.time() (wall,
        # comparable with a time.time() taken in another process: self.wall).
        self.events = []
        self.wall = []
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            t, wall = time.monotonic(), time.time()
            with self.lock:
                self.events.append((t, json.loads(line)))
                self.wall.append(wall)

    def snapshot(self):
        with self.lock:
            return list(self.events)

    def snapshot_wall(self):
        """(wall-clock read time, event) of every line so far."""
        with self.lock:
            return [(w, e) for w, (_, e) in zip(self.wall, self.events)]

    def wait_for(self, pred, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, e in self.snapshot():
                if pred(e):
                    return t, e
            time.sleep(0.001)
        return None

    def ready(self):
        """Returns once the watcher reports new listeners (sentinels until one shows)."""
        for _ in range(100):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen()
            port = s.getsockname()[1]
            hit = self.wait_for(lambda e: e["port"] == port and e["event"] == "open", 0.3)
            s.close()
            if hit:
                return
        sys.exit("portwatch watch never reported a sentinel listener")

    def cpu_seconds(self):
        return cpu_seconds(self.p.pid)

    def cpu_ticks(self):
        return cpu_ticks(self.p.pid)

    def threads(self):
        return len(os.listdir(f"/proc/{self.p.pid}/task"))

    def fds(self):
        return len(os.listdir(f"/proc/{self.p.pid}/fd"))

    def stop(self):
        self.p.terminate()
        self.p.wait(timeout=10)
