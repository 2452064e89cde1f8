"""A real server for the client's tests: the built ``admedia`` binary on a
free loopback port, with one ``admedia-worker`` agent (simulate executor,
which uploads placeholder outputs) so jobs finish and have outputs; once on
the embedded store, and once on PostgreSQL in a schema of its own when
``DATABASE_URL`` is set (required when ``CI=true``).

Binaries: ``ADMEDIA_BIN`` and ``ADMEDIA_WORKER_BIN`` (``cargo test`` sets
both), else ``$CARGO_TARGET_DIR/debug`` or the clone's ``target/debug``
(``cargo build --workspace`` builds both there).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import httpx
import pytest

from admedia import Client

ADMIN_TOKEN = "pytest-admin-token-0123456789abcdef0123"
WORKER_TOKEN = "pytest-worker-token-0123456789abcdef012"
REPO = Path(__file__).resolve().parents[3]


def _ci() -> bool:
    return os.environ.get("CI", "") in ("true", "1")


def _binary(env: str, name: str) -> Path:
    named = os.environ.get(env)
    candidates = [Path(named)] if named else []
    target = os.environ.get("CARGO_TARGET_DIR")
    if target:
        candidates.append(Path(target) / "debug" / name)
    candidates.append(REPO / "target" / "debug" / name)
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise RuntimeError(f"{name} not found (set {env} or run cargo build): tried {[str(c) for c in candidates]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_schema_url(url: str) -> str:
    """A fresh schema in the test database, named in the URL's search_path."""
    schema = f"py_{uuid.uuid4().hex}"
    psql = shutil.which("psql")
    if psql is None:
        raise RuntimeError("psql is needed to create the PostgreSQL test schema")
    subprocess.run([psql, url, "-qtAc", f"CREATE SCHEMA {schema}"], check=True, capture_output=True)
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-c%20search_path%3D{schema}"


@dataclass
class Server:
    url: str
    store: str
    log: Path

    def client(self, api_key: Optional[str] = None) -> Client:
        return Client(api_key=api_key, base_url=self.url, timeout=30)

    def new_user(self, name: str = "pytest") -> Client:
        email = f"{name}-{uuid.uuid4().hex[:12]}@example.com"
        with self.client() as anonymous:
            registered = anonymous.register(email, "Py Test")
        return self.client(registered.api_key)

    def admin(self, method: str, path: str, json: object = None) -> httpx.Response:
        res = httpx.request(
            method, self.url + path, json=json, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
        )
        assert res.status_code < 300, f"{method} {path}: {res.status_code} {res.text}"
        return res


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"admedia exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"admedia not ready after {timeout} s:\n{log.read_text()}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session", params=["embedded", "postgres"])
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    store = request.param
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADMEDIA_")}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    if store == "postgres":
        url = os.environ.get("DATABASE_URL", "")
        if not url:
            if _ci():
                pytest.fail("DATABASE_URL is required when CI=true")
            pytest.skip("DATABASE_URL is not set")
        env["DATABASE_URL"] = _pg_schema_url(url)
    port = _free_port()
    scratch = Path(tempfile.mkdtemp(prefix="admedia-pytest-"))
    env.update(
        {
            "ADMEDIA_BIND": f"127.0.0.1:{port}",
            "ADMEDIA_ADMIN_TOKEN": ADMIN_TOKEN,
            "ADMEDIA_WORKER_TOKEN": WORKER_TOKEN,
            "ADMEDIA_SIM_WORKERS": "0",
            "ADMEDIA_HTTP_WORKERS": "2",
            "ADMEDIA_OBJECT_STORE": str(scratch / "objects"),
            # The webhook receiver listens on loopback.
            "ADMEDIA_WEBHOOK_ALLOW_PRIVATE": "true",
            "ADMEDIA_WEBHOOK_RETRY_BASE_MS": "100",
            "ADMEDIA_REGISTRATIONS_PER_HOUR": "0",
            "ADMEDIA_AUTH_FAILURES_PER_MINUTE": "0",
            # Only the rate-limit test's accounts are basic.
            "ADMEDIA_RATE_LIMITS": "basic=3",
            "ADMEDIA_LOG_FORMAT": "json",
        }
    )
    log = scratch / "admedia.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(_binary("ADMEDIA_BIN", "admedia"))], env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    worker = None
    try:
        _wait_ready(base, proc, log)
        worker_env = dict(env)
        worker_env.update(
            {
                "ADMEDIA_SERVER_URL": f"ws://127.0.0.1:{port}",
                "ADMEDIA_WORKER_SLOTS": "4",
                "ADMEDIA_SIM_JOB_MS": "50",
            }
        )
        with open(scratch / "worker.log", "wb") as out:
            worker = subprocess.Popen(
                [str(_binary("ADMEDIA_WORKER_BIN", "admedia-worker"))],
                env=worker_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        yield Server(base, store, log)
    finally:
        if worker is not None:
            _stop(worker)
        _stop(proc)
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    with server.new_user() as c:
        yield c
