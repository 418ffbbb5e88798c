#!/usr/bin/env python3
"""Brute force and enumeration: the login throttles hold, and a login for an unknown email takes
the same time as a wrong password for a known one.

Run by bench/login-timing.sh. First, with the default limits, logins from one address are cut
off after COFFER_LOGIN_RATE_PER_IP a minute and failures of one account after
COFFER_LOGIN_RATE_PER_ACCOUNT (429 with Retry-After). Then a server with the limits lifted
answers TRIES logins of each kind, interleaved at random; the two timing distributions are
compared: their medians must be within 5 % of each other. A Mann-Whitney U test's z is printed
beside (|z| < 2.58: no difference found at the 1 % level).
"""

import math
import os
import random
import statistics
import sys
import time

from coffer_bench import PASSWORD, Server, request

BIN = os.environ["COFFER_BIN"]
WORK = os.environ["WORK"]
TRIES = int(os.environ.get("TRIES", "300"))


def log(*parts):
    print("login-timing:", *parts, file=sys.stderr, flush=True)


def login(email, password, headers=None):
    return request("POST", "/api/v1/auth/login",
                   body={"email": email, "password": password}, headers_out=headers)


def throttles():
    server = Server(BIN, os.path.join(WORK, "limits"))
    server.start()
    request("POST", "/api/v1/auth/register",
            body={"email": "ann@example.com", "password": PASSWORD, "name": "Ann"})
    # One account, wrong passwords: cut off after 5 failures a minute (the default).
    statuses = [login("ann@example.com", f"wrong {i}")[0] for i in range(8)]
    per_account = statuses.index(429) if 429 in statuses else None
    # One address, unknown accounts: cut off after 20 attempts a minute (the default).
    headers = {}
    statuses = []
    for i in range(30):
        status, _ = login(f"nobody{i}@example.com", "whatever it is", headers)
        statuses.append(status)
        if status == 429:
            break
    # The account's 8 tries came from the same address.
    per_ip = 8 + statuses.index(429) if 429 in statuses else None
    server.kill()
    log(f"throttles: account cut off after {per_account} failures, address after {per_ip} "
        f"attempts (Retry-After: {headers.get('retry-after')})")
    return per_account is not None and per_account <= 5 and per_ip is not None \
        and per_ip <= 20 and "retry-after" in headers


def mann_whitney_z(a, b):
    ranked = sorted([(v, 0) for v in a] + [(v, 1) for v in b])
    ranks = {}
    i = 0
    while i < len(ranked):
        j = i
        while j + 1 < len(ranked) and ranked[j + 1][0] == ranked[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks.setdefault(k, (i + j) / 2 + 1)
        i = j + 1
    r1 = sum(ranks[k] for k, (_, group) in enumerate(ranked) if group == 0)
    n1, n2 = len(a), len(b)
    u = r1 - n1 * (n1 + 1) / 2
    mean = n1 * n2 / 2
    sd = math.sqrt(n1 * n2 * (n1 + n2 + 1) / 12)
    return (u - mean) / sd


def timing():
    server = Server(BIN, os.path.join(WORK, "timing"), extra_env={
        "COFFER_LOGIN_RATE_PER_IP": "1000000", "COFFER_LOGIN_RATE_PER_ACCOUNT": "1000000"})
    server.start()
    request("POST", "/api/v1/auth/register",
            body={"email": "ann@example.com", "password": PASSWORD, "name": "Ann"})
    kinds = ["unknown", "wrong"] * TRIES
    random.shuffle(kinds)
    times = {"unknown": [], "wrong": []}
    for n, kind in enumerate(kinds):
        email = f"nobody{n}@example.com" if kind == "unknown" else "ann@example.com"
        began = time.perf_counter()
        status, _ = login(email, "not the password, surely")
        times[kind].append(time.perf_counter() - began)
        if status != 401:
            raise SystemExit(f"login answered {status}")
    server.kill()
    unknown, wrong = times["unknown"], times["wrong"]
    mu, mw = statistics.median(unknown), statistics.median(wrong)
    z = mann_whitney_z(unknown, wrong)
    log(f"{TRIES} tries each: unknown email median {mu * 1000:.1f} ms, wrong password "
        f"{mw * 1000:.1f} ms (difference {abs(mu - mw) / mw * 100:.1f} %); Mann-Whitney z = {z:.2f}")
    return abs(mu - mw) / mw < 0.05


def main():
    os.makedirs(os.path.join(WORK, "limits"))
    os.makedirs(os.path.join(WORK, "timing"))
    ok = throttles()
    ok = timing() and ok
    if not ok:
        raise SystemExit("FAILED")
    log("ok")


if __name__ == "__main__":
    main()
