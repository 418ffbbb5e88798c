#!/usr/bin/env python3
"""PostgreSQL restarted under load: coffer-server answers 503 with Retry-After while its database
is down (never 500, never a crash), serves again within 5 s of the database, and loses no
acknowledged write.

Run by bench/db-restart.sh, which gives it a private PostgreSQL instance (never the shared
cluster). The load is half of what the server sustains (measured first): THREADS clients, 90 %
reads and 10 % writes, each write kept in a ledger once acknowledged. PostgreSQL is restarted in
`fast` mode, then in `immediate` mode (a crash: recovery on start).
"""

import os
import subprocess
import sys
import threading
import time

from coffer_bench import Server, request, setup

BIN = os.environ["COFFER_BIN"]
WORK = os.environ["WORK"]
PG_CTL = os.environ["PG_CTL"]
PGDATA = os.environ["PGDATA"]
DATABASE_URL = os.environ["DATABASE_URL"]
THREADS = int(os.environ.get("THREADS", "8"))
ENV = "/api/v1/orgs/crash/projects/web/environments/production/secrets"
KEYS = 100


def log(*parts):
    print("db-restart:", *parts, file=sys.stderr, flush=True)


def pg(*args):
    subprocess.run(["su", "postgres", "-c", " ".join([PG_CTL, "-D", PGDATA, "-w", *args])],
                   check=True, stdout=subprocess.DEVNULL)


class Load:
    def __init__(self, token, rate):
        self.token = token
        self.rate = rate  # requests per second per client, 0: as fast as possible
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.events = []  # (time, status, retry_after)
        self.acked = {}
        self.unexplained = []

    def client(self, n):
        i = 0
        interval = 1 / self.rate if self.rate else 0
        next_at = time.monotonic()
        while not self.stop.is_set():
            key = f"K{(n * 7 + i) % KEYS}"
            write = i % 10 == 0
            value = f"c{n}-i{i}"
            headers = {}
            try:
                if write:
                    status, body = request("PUT", f"{ENV}/{key}", self.token, {"value": value},
                                           timeout=10, headers_out=headers)
                else:
                    status, body = request("GET", f"{ENV}/{key}", self.token, timeout=10,
                                           headers_out=headers)
            except OSError as e:
                status, body = -1, str(e)
            retry = "retry-after" in headers
            with self.lock:
                self.events.append((time.monotonic(), status, retry))
                if write and status == 200:
                    self.acked[key] = value
                if status not in (200, 503):
                    self.unexplained.append((status, str(body)[:200]))
            i += 1
            if interval:
                next_at += interval
                time.sleep(max(0, next_at - time.monotonic()))

    def run(self, seconds):
        self.stop.clear()
        workers = [threading.Thread(target=self.client, args=(n,)) for n in range(THREADS)]
        for w in workers:
            w.start()
        return workers


def main():
    server = Server(BIN, WORK, DATABASE_URL)
    server.start()
    token, _ = setup()
    for k in range(KEYS):
        request("PUT", f"{ENV}/K{k}", token, {"value": "initial"})

    probe = Load(token, 0)
    workers = probe.run(3)
    time.sleep(3)
    probe.stop.set()
    for w in workers:
        w.join()
    capacity = sum(1 for e in probe.events if e[1] == 200) / 3
    rate = capacity / 2 / THREADS
    log(f"capacity {capacity:.0f} requests/s; the load is half: {capacity / 2:.0f}/s")

    failed = False
    for mode in ("fast", "immediate"):
        load = Load(token, rate)
        load.acked = dict(probe.acked)
        workers = load.run(0)
        time.sleep(2)
        began = time.monotonic()
        pg("restart", "-m", mode)
        ready = time.monotonic()
        time.sleep(6)
        load.stop.set()
        for w in workers:
            w.join()
        outage = [e for e in load.events if e[0] >= began and e[1] != 200]
        after = [e for e in load.events if e[0] >= ready]
        first_ok = next((e[0] for e in after if e[1] == 200), None)
        back = (first_ok - ready) if first_ok else float("inf")
        by_status = {}
        for e in outage:
            by_status[e[1]] = by_status.get(e[1], 0) + 1
        no_retry = sum(1 for e in outage if e[1] == 503 and not e[2])
        log(f"{mode} restart: PostgreSQL down {ready - began:.2f} s; refusals {by_status} "
            f"({no_retry} without Retry-After); "
            f"served again {back:.2f} s after PostgreSQL; "
            f"{len(load.unexplained)} answers neither 200 nor 503")
        for status, body in load.unexplained[:5]:
            log(f"  HTTP {status}: {body}")
        if load.unexplained or back >= 5 or server.proc.poll() is not None or no_retry:
            failed = True
        probe.acked = load.acked

    lost = 0
    for key, value in probe.acked.items():
        status, body = request("GET", f"{ENV}/{key}", token)
        if status != 200 or body["value"] != value:
            lost += 1
    log(f"{len(probe.acked)} keys written: {lost} acknowledged writes lost")
    server.kill()
    if failed or lost:
        raise SystemExit("FAILED")
    log("ok")


if __name__ == "__main__":
    main()
