"""Shared by the battery's scripts: a coffer-server process, HTTP requests, a first user."""

import http.client
import json
import os
import signal
import subprocess
import time

PORT = int(os.environ.get("PORT", "18291"))
PASSWORD = "correct horse battery staple"


class Server:
    """coffer-server `binary` on a data directory in `work` (and `database_url`, if any)."""

    def __init__(self, binary, work, database_url="", extra_env=None):
        self.binary = binary
        self.work = work
        self.proc = None
        self.log = open(os.path.join(work, "server.log"), "ab")
        self.env = dict(os.environ, COFFER_LISTEN=f"127.0.0.1:{PORT}",
                        COFFER_DATA_DIR=os.path.join(work, "data"), COFFER_LOG="warn")
        if database_url:
            self.env["COFFER_DATABASE_URL"] = database_url
        self.env.update(extra_env or {})

    def run(self, *args):
        """Runs a command of the server (`rotate-master-key`) with its configuration."""
        return subprocess.Popen([self.binary, *args], env=self.env, stdout=self.log,
                                stderr=self.log)

    def start(self):
        """Starts the server; returns how long it took to answer."""
        began = time.monotonic()
        self.proc = subprocess.Popen([self.binary], env=self.env, stdout=self.log,
                                     stderr=self.log)
        deadline = began + 30
        while time.monotonic() < deadline:
            try:
                status, _ = request("GET", "/health")
                if status == 200:
                    return time.monotonic() - began
            except OSError:
                pass
            time.sleep(0.01)
        raise SystemExit("coffer-server did not start; see " + os.path.join(self.work, "server.log"))

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def request(method, path, token=None, body=None, timeout=5, headers_out=None):
    """(status, JSON body); the response's headers go into `headers_out` when given."""
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=timeout)
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = "Bearer " + token
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers=headers)
        response = conn.getresponse()
        data = response.read()
        if headers_out is not None:
            headers_out.update((k.lower(), v) for k, v in response.getheaders())
        return response.status, (json.loads(data) if data else None)
    finally:
        conn.close()


def setup(environments=("production",)):
    """A user, organization `crash`, project `web` and a read-write service token for
    `environments` of it; returns the token and the user's access token."""
    def ok(status, what):
        if status not in (200, 201, 204):
            raise SystemExit(f"{what}: HTTP {status}")
    ok(request("POST", "/api/v1/auth/register", body={
        "email": "crash@example.com", "password": PASSWORD, "name": "Crash"})[0], "register")
    status, body = request("POST", "/api/v1/auth/login", body={
        "email": "crash@example.com", "password": PASSWORD})
    ok(status, "login")
    session = body["access_token"]
    ok(request("POST", "/api/v1/orgs", session, {"name": "Crash", "slug": "crash"})[0], "org")
    ok(request("POST", "/api/v1/orgs/crash/projects", session,
               {"name": "Web", "slug": "web"})[0], "project")
    status, body = request("POST", "/api/v1/orgs/crash/service-tokens", session, {
        "name": "writer", "project": "web", "environments": list(environments),
        "access": "read-write"})
    ok(status, "service token")
    return body["token"], session
