#!/usr/bin/env python3
"""Crash safety of coffer-server: acknowledged writes survive `kill -9`.

Run by bench/crash-safety.sh (which builds the server). Each round runs a storm of secret
writes from THREADS clients, each keeping a ledger of its keys: the value last acknowledged
(HTTP 200) and the value in flight (sent, no answer yet). At a random moment the server gets
SIGKILL; it is started again on the same data directory (and database), the time until it
answers is measured, and every key is read back. A key must hold its last acknowledged value,
or the value that was in flight when the server died (that write may or may not have landed).
Any other value is a lost write; a read that fails is a decryption (or storage) failure.
"""

import os
import random
import sys
import threading
import time

from coffer_bench import Server, request, setup

BIN = os.environ["COFFER_BIN"]
WORK = os.environ["WORK"]
ROUNDS = int(os.environ.get("ROUNDS", "20"))
THREADS = int(os.environ.get("THREADS", "8"))
KEYS = int(os.environ.get("KEYS_PER_THREAD", "25"))
DATABASE_URL = os.environ.get("DATABASE_URL", "")
ENV = "/api/v1/orgs/crash/projects/web/environments/production/secrets"


def log(*parts):
    print("crash-safety:", *parts, file=sys.stderr, flush=True)


class Ledger:
    """One client's keys: acknowledged value, and the value in flight."""

    def __init__(self, thread):
        self.thread = thread
        self.acked = {}
        self.in_flight = {}
        self.acks = 0


def storm(token, ledger, rnd, stop):
    n = 0
    while not stop.is_set():
        key = f"K{ledger.thread}_{n % KEYS}"
        value = f"r{rnd}-t{ledger.thread}-n{n}-" + "x" * random.randrange(0, 512)
        ledger.in_flight[key] = value
        try:
            status, _ = request("PUT", f"{ENV}/{key}", token, {"value": value}, timeout=2)
        except OSError:
            return  # the server died: this write's fate is unknown
        if status == 200:
            ledger.acked[key] = value
            ledger.acks += 1
            del ledger.in_flight[key]
        elif status in (429, 503):
            del ledger.in_flight[key]  # refused, not written
            time.sleep(0.01)
        else:
            raise SystemExit(f"write {key}: HTTP {status}")
        n += 1


def verify(token, ledgers):
    lost = failures = checked = 0
    for ledger in ledgers:
        for key in sorted(set(ledger.acked) | set(ledger.in_flight)):
            status, body = request("GET", f"{ENV}/{key}", token)
            if status == 404 and key not in ledger.acked:
                continue  # only ever in flight: it may never have landed
            if status != 200:
                failures += 1
                log(f"read {key}: HTTP {status} {body}")
                continue
            checked += 1
            allowed = {ledger.acked.get(key), ledger.in_flight.get(key)} - {None}
            if body["value"] not in allowed:
                lost += 1
                log(f"lost write: {key} holds {body['value'][:40]!r}, "
                    f"expected {[v[:40] for v in allowed]}")
            else:
                # What is there now is what the next round must keep.
                ledger.acked[key] = body["value"]
                ledger.in_flight.pop(key, None)
        ledger.in_flight.clear()
    return checked, lost, failures


def main():
    server = Server(BIN, WORK, DATABASE_URL)
    first = server.start()
    token, _ = setup()
    ledgers = [Ledger(t) for t in range(THREADS)]
    restarts, total_lost, total_failures, total_acks = [], 0, 0, 0
    log(f"started in {first:.2f} s; {ROUNDS} rounds of {THREADS} writers"
        f" ({'PostgreSQL' if DATABASE_URL else 'SQLite'})")
    for rnd in range(1, ROUNDS + 1):
        stop = threading.Event()
        before = sum(l.acks for l in ledgers)
        workers = [threading.Thread(target=storm, args=(token, l, rnd, stop)) for l in ledgers]
        for w in workers:
            w.start()
        time.sleep(random.uniform(0.3, 1.5))
        server.kill()
        stop.set()
        for w in workers:
            w.join()
        acks = sum(l.acks for l in ledgers) - before
        total_acks += acks
        took = server.start()
        restarts.append(took)
        checked, lost, failures = verify(token, ledgers)
        total_lost += lost
        total_failures += failures
        log(f"round {rnd}: {acks} writes acknowledged before the kill; restart {took:.2f} s; "
            f"{checked} keys checked, {lost} lost, {failures} unreadable")
    server.kill()
    slowest = max(restarts)
    log(f"{total_acks} acknowledged writes in {ROUNDS} kills: {total_lost} lost, "
        f"{total_failures} unreadable; restart median {sorted(restarts)[len(restarts)//2]:.2f} s, "
        f"slowest {slowest:.2f} s")
    if total_lost or total_failures or slowest >= 2.0:
        raise SystemExit("FAILED")
    log("ok")


if __name__ == "__main__":
    main()
