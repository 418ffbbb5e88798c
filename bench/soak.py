#!/usr/bin/env python3
"""Soak: DURATION seconds at 70 % of the measured maximum, 90 % reads and 10 % writes.

Run by bench/soak.sh. The maximum is what CLIENTS clients sustain for 5 s, as fast as they go;
then the same clients run paced at 70 % of it. Every WINDOW seconds the script prints the
window's requests, errors, p50 and p99 latency, and the server's RSS and open files. The first
WARMUP seconds (300) fill the server's caches (SQLite's page cache, 2 MiB per connection, the secret and
data-key caches) and are not compared. It passes with 0 errors, and, comparing the median of the
last three windows with that of the first three after the warm-up: p99 within 20 %, RSS within
20 % and open files within 20 %.
"""

import os
import random
import statistics
import sys
import threading
import time

from coffer_bench import Server, request, setup

BIN = os.environ["COFFER_BIN"]
WORK = os.environ["WORK"]
DATABASE_URL = os.environ.get("DATABASE_URL", "")
DURATION = int(os.environ.get("DURATION", "600"))
WINDOW = int(os.environ.get("WINDOW", "30"))
WARMUP = int(os.environ.get("WARMUP", "300"))
CLIENTS = int(os.environ.get("CLIENTS", "8"))
ENV = "/api/v1/orgs/crash/projects/web/environments/production/secrets"
KEYS = 200


def log(*parts):
    print("soak:", *parts, file=sys.stderr, flush=True)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def open_files(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


class Run:
    def __init__(self, token, rate):
        self.token, self.rate = token, rate
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.samples = []  # (time, latency, ok)

    def client(self, n):
        rng = random.Random(n)
        interval = 1 / self.rate if self.rate else 0
        next_at = time.monotonic()
        while not self.stop.is_set():
            key = f"K{rng.randrange(KEYS)}"
            began = time.perf_counter()
            try:
                if rng.random() < 0.1:
                    status, _ = request("PUT", f"{ENV}/{key}", self.token,
                                        {"value": f"v{rng.random()}"})
                else:
                    status, _ = request("GET", f"{ENV}/{key}", self.token)
            except OSError:
                status = -1
            took = time.perf_counter() - began
            with self.lock:
                self.samples.append((time.monotonic(), took, status == 200))
            if interval:
                next_at += interval
                time.sleep(max(0, next_at - time.monotonic()))

    def start(self):
        self.workers = [threading.Thread(target=self.client, args=(n,)) for n in range(CLIENTS)]
        for w in self.workers:
            w.start()

    def finish(self):
        self.stop.set()
        for w in self.workers:
            w.join()


def p(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0


def main():
    server = Server(BIN, WORK, DATABASE_URL)
    server.start()
    token, _ = setup()
    request("PUT", ENV, token, {"secrets": [{"key": f"K{k}", "value": "x" * 256}
                                             for k in range(KEYS)]})
    probe = Run(token, 0)
    probe.start()
    time.sleep(5)
    probe.finish()
    maximum = sum(1 for s in probe.samples if s[2]) / 5
    rate = maximum * 0.7
    log(f"maximum {maximum:.0f} requests/s; soaking at {rate:.0f}/s for {DURATION} s")

    run = Run(token, rate / CLIENTS)
    run.start()
    pid = server.proc.pid
    windows = []
    began = time.monotonic()
    try:
        while time.monotonic() - began < DURATION:
            start = time.monotonic()
            time.sleep(WINDOW)
            with run.lock:
                window = [s for s in run.samples if s[0] >= start]
            lat = [s[1] for s in window]
            errors = sum(1 for s in window if not s[2])
            row = (len(window), errors, p(lat, 0.5), p(lat, 0.99), rss_kib(pid), open_files(pid))
            windows.append(row)
            log(f"{time.monotonic() - began:5.0f} s: {row[0]} requests, {row[1]} errors, "
                f"p50 {row[2] * 1000:.1f} ms, p99 {row[3] * 1000:.1f} ms, "
                f"RSS {row[4] / 1024:.1f} MiB, {row[5]} open files")
    finally:
        run.finish()
        server.kill()
    errors = sum(w[1] for w in windows)
    measured = windows[WARMUP // WINDOW:]
    if len(measured) < 6:
        raise SystemExit("too short to compare: DURATION must be WARMUP + 6 windows at least")
    first, last = measured[:3], measured[-3:]

    def change(column):
        before = statistics.median(w[column] for w in first)
        after = statistics.median(w[column] for w in last)
        return (after - before) / before

    drift, rss, files = change(3), change(4), change(5)
    log(f"{sum(w[0] for w in windows)} requests, {errors} errors; p99 drift {drift * 100:+.0f} %, "
        f"RSS {rss * 100:+.0f} %, open files {files * 100:+.0f} %")
    if errors or drift > 0.2 or rss > 0.2 or files > 0.2:
        raise SystemExit("FAILED")
    log("ok")


if __name__ == "__main__":
    main()
