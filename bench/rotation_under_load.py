#!/usr/bin/env python3
"""Master-key rotation under load: `coffer-server rotate-master-key` while reads and writes run.

Run by bench/rotation-under-load.sh. PROJECTS projects (each with its own data keys) hold
secrets written under master key A. The server is restarted with master key B and A as a
previous key, as the README's rotation steps say; while THREADS clients read and write, the
rotation runs once killed with SIGKILL after a random few milliseconds, then again to the end.
Every request must succeed (0 failed), the rerun must finish, and a server started with B alone
(no previous key) must read every secret: no data key is left wrapped by A.
"""

import base64
import os
import random
import sys
import threading
import time

from coffer_bench import Server, request, setup

BIN = os.environ["COFFER_BIN"]
WORK = os.environ["WORK"]
DATABASE_URL = os.environ.get("DATABASE_URL", "")
THREADS = int(os.environ.get("THREADS", "8"))
PROJECTS = int(os.environ.get("PROJECTS", "40"))
KEYS = 20


def log(*parts):
    print("rotation:", *parts, file=sys.stderr, flush=True)


def key():
    return base64.b64encode(os.urandom(32)).decode()


def path(project, name=""):
    return f"/api/v1/orgs/crash/projects/{project}/environments/production/secrets/{name}".rstrip("/")


def main():
    a, b = key(), key()
    jwt = base64.b64encode(os.urandom(48)).decode()
    common = {"COFFER_JWT_SECRET": jwt}
    server = Server(BIN, WORK, DATABASE_URL, dict(common, COFFER_MASTER_KEY=a))
    server.start()
    _, session = setup()
    projects = ["web"] + [f"p{i}" for i in range(1, PROJECTS)]
    for project in projects[1:]:
        status, _ = request("POST", "/api/v1/orgs/crash/projects", session,
                            {"name": project, "slug": project})
        assert status == 201, status
    for project in projects:
        entries = [{"key": f"K{i}", "value": f"{project}-{i}"} for i in range(KEYS)]
        status, _ = request("PUT", path(project), session, {"secrets": entries})
        assert status == 200, (project, status)
    server.kill()

    rotating = Server(BIN, WORK, DATABASE_URL,
                      dict(common, COFFER_MASTER_KEY=b, COFFER_PREVIOUS_MASTER_KEYS=a))
    rotating.start()
    stop = threading.Event()
    counts = {"ok": 0, "failed": 0}
    lock = threading.Lock()

    def load(seed):
        rng = random.Random(seed)
        while not stop.is_set():
            project = rng.choice(projects)
            name = f"K{rng.randrange(KEYS)}"
            if rng.random() < 0.9:
                status, body = request("GET", path(project, name), session)
                good = status == 200 and body["value"].startswith(project)
            else:
                status, _ = request("PUT", path(project, name), session,
                                    {"value": f"{project}-{rng.random()}"})
                good = status == 200
            with lock:
                counts["ok" if good else "failed"] += 1
                if not good:
                    log(f"{project}/{name}: HTTP {status}")

    workers = [threading.Thread(target=load, args=(i,)) for i in range(THREADS)]
    for w in workers:
        w.start()
    time.sleep(0.5)
    first = rotating.run("rotate-master-key")
    time.sleep(random.uniform(0.005, 0.05))
    first.kill()
    first_code = first.wait()
    log("first rotation " + ("killed mid-way" if first_code < 0 else f"finished first (exit {first_code})"))
    began = time.monotonic()
    second = rotating.run("rotate-master-key")
    second_code = second.wait()
    took = time.monotonic() - began
    time.sleep(0.5)
    stop.set()
    for w in workers:
        w.join()
    rotating.kill()
    log(f"rerun: exit {second_code} in {took:.2f} s; requests during the rotation: "
        f"{counts['ok']} succeeded, {counts['failed']} failed")

    # With B alone the server starts only if no data key is still wrapped by A.
    only_b = Server(BIN, WORK, DATABASE_URL, dict(common, COFFER_MASTER_KEY=b))
    only_b.start()
    unreadable = 0
    for project in projects:
        status, body = request("GET", path(project), session)
        if status != 200 or len(body["secrets"]) != KEYS:
            unreadable += 1
    only_b.kill()
    log(f"with the new key alone: {len(projects) - unreadable} of {len(projects)} projects read")
    if counts["failed"] or second_code != 0 or unreadable:
        raise SystemExit("FAILED")
    log("ok")


if __name__ == "__main__":
    main()
