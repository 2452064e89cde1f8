"""The worker SDK (admedia.worker) against a real server whose only GPUs
are the Python workers these tests start: no simulated workers and no
``admedia-worker`` agent. Once on the embedded store and once on
PostgreSQL, like the client's tests (see conftest.py).

Each test starts its own worker processes (examples/pillow_worker.py or
worker_program.py beside this file) and stops them before it ends, so
only its own workers take its jobs.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import pytest
from PIL import Image

from admedia import Client
from admedia.worker import Cancelled, Job, Worker, WorkerError, connect_url, run
from conftest import ADMIN_TOKEN, REPO, WORKER_TOKEN, Server, _binary, _free_port, _stop, _wait_ready

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WAIT = 60
HERE = Path(__file__).resolve().parent
EXAMPLE = REPO / "examples" / "pillow_worker.py"
PROGRAM = HERE / "worker_program.py"


@contextlib.contextmanager
def _database() -> Iterator[str]:
    """A database of its own, dropped afterwards: the scheduler's leader
    lock is one per database, so a server sharing one with another test's
    server (in a schema of its own) might only stand by and redirect."""
    url = os.environ.get("DATABASE_URL", "")
    if not url:
        if os.environ.get("CI", "") in ("true", "1"):
            pytest.fail("DATABASE_URL is required when CI=true")
        pytest.skip("DATABASE_URL is not set")
    psql = shutil.which("psql")
    if psql is None:
        raise RuntimeError("psql is needed to create the PostgreSQL test database")
    name = f"admedia_pyw_{uuid.uuid4().hex}"
    subprocess.run([psql, url, "-qtAc", f"CREATE DATABASE {name}"], check=True, capture_output=True)
    base, _, rest = url.rpartition("/")
    query = rest.partition("?")[2]
    try:
        yield f"{base}/{name}" + (f"?{query}" if query else "")
    finally:
        subprocess.run([psql, url, "-qtAc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], capture_output=True)


def _server_env(port: int, scratch: Path, database_url: Optional[str]) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADMEDIA_")}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    env.update(
        {
            "ADMEDIA_BIND": f"127.0.0.1:{port}",
            "ADMEDIA_ADMIN_TOKEN": ADMIN_TOKEN,
            "ADMEDIA_WORKER_TOKEN": WORKER_TOKEN,
            "ADMEDIA_SIM_WORKERS": "0",
            "ADMEDIA_HTTP_WORKERS": "2",
            "ADMEDIA_OBJECT_STORE": str(scratch / "objects"),
            # Fixed, so URLs signed before a restart still work after it.
            "ADMEDIA_OBJECT_SECRET": "pyworker-object-secret-0123456789abcdef",
            "ADMEDIA_REGISTRATIONS_PER_HOUR": "0",
            "ADMEDIA_AUTH_FAILURES_PER_MINUTE": "0",
            # Retries of system failures come quickly.
            "ADMEDIA_RETRY_BASE_MS": "100",
            "ADMEDIA_RETRY_MAX_MS": "200",
            "ADMEDIA_LOG_FORMAT": "json",
        }
    )
    return env


def _start_server(env: dict, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        proc = subprocess.Popen([str(_binary("ADMEDIA_BIN", "admedia"))], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(f"http://{env['ADMEDIA_BIND']}", proc, log)
    except BaseException:
        _stop(proc)
        raise
    return proc


@pytest.fixture(scope="module", params=["embedded", "postgres"])
def gpu_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """A server with no GPU of its own: jobs wait for a Python worker."""
    with contextlib.ExitStack() as stack:
        database_url = stack.enter_context(_database()) if request.param == "postgres" else None
        port = _free_port()
        scratch = Path(tempfile.mkdtemp(prefix="admedia-pyworker-"))
        stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        log = scratch / "admedia.log"
        proc = _start_server(_server_env(port, scratch, database_url), log)
        stack.callback(_stop, proc)
        yield Server(f"http://127.0.0.1:{port}", request.param, log)


class Workers:
    """Worker processes of one test, stopped (SIGTERM, then SIGKILL) when it
    ends; their output goes to a log shown when a test fails."""

    def __init__(self, server: Server, scratch: Path) -> None:
        self.server = server
        self.marks = scratch / "marks"
        self.marks.mkdir()
        self.scratch = scratch
        self.procs: List[subprocess.Popen] = []

    def start(self, script: Path = PROGRAM, *args: str, url: Optional[str] = None) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ADMEDIA_")}
        env.update(
            {
                "ADMEDIA_SERVER_URL": url or self.server.url.replace("http://", "ws://"),
                "ADMEDIA_WORKER_TOKEN": WORKER_TOKEN,
                "ADMEDIA_TEST_MARKS": str(self.marks),
                "ADMEDIA_TEST_WORKER_NAME": f"py-{len(self.procs)}-{uuid.uuid4().hex[:6]}",
                "PYTHONDONTWRITEBYTECODE": "1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        log = open(self.scratch / f"worker-{len(self.procs)}.log", "wb")
        proc = subprocess.Popen([sys.executable, str(script), *args], env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in sorted(self.scratch.glob("worker-*.log"))
        )

    def wait_mark(self, name: str, timeout: float = WAIT) -> str:
        path = self.marks / name
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline:
                raise AssertionError(f"no mark {name} after {timeout} s\n{self.logs()}")
            time.sleep(0.05)
        return path.read_text()

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def workers(gpu_server: Server) -> Iterator[Workers]:
    scratch = Path(tempfile.mkdtemp(prefix="admedia-pyworker-test-"))
    w = Workers(gpu_server, scratch)
    try:
        yield w
    finally:
        w.stop_all()
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture
def user(gpu_server: Server) -> Iterator[Client]:
    with gpu_server.new_user("pyworker") as c:
        yield c


def wait_state(client: Client, job_id: str, done: Callable[[object], bool], workers: Workers, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while True:
        job = client.job(job_id)
        if done(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job.state} after {timeout} s: {job}\n{workers.logs()}")
        time.sleep(0.1)


def finished(client: Client, job_id: str, workers: Workers):
    return wait_state(client, job_id, lambda j: j.finished, workers)


def test_the_example_worker_serves_real_jobs(user, workers) -> None:
    proc = workers.start(EXAMPLE)
    job = user.submit("image", "sdxl", "a lighthouse at dusk", params={"width": 320, "height": 200, "count": 2, "seed": 3})
    done = finished(user, job.id, workers)
    assert done.state == "succeeded" and done.charge == "posted", (done, workers.logs())
    assert done.attempts == 1 and len(done.result.outputs) == 2
    pictures = []
    for n in range(2):
        output = user.download_output(done.id, n)
        assert output.content.startswith(PNG_MAGIC) and output.content_type == "image/png"
        with Image.open(io.BytesIO(output.content)) as image:
            image.verify()
        with Image.open(io.BytesIO(output.content)) as image:
            assert image.size == (320, 200)
            pictures.append(image.convert("RGB").getpixel((319, 199)))
    # Each output is its own picture, and the same job draws the same one.
    assert pictures[0] != pictures[1]
    again = finished(user, user.submit("image", "sdxl", "a lighthouse at dusk",
                                       params={"width": 320, "height": 200, "count": 2, "seed": 3}).id, workers)
    assert again.state == "succeeded"
    assert user.download_output(again.id, 1).content == user.download_output(done.id, 1).content
    other = finished(user, user.submit("image", "sdxl", "a fox", params={"width": 320, "height": 200, "seed": 3}).id, workers)
    assert user.download_output(other.id, 0).content != user.download_output(done.id, 0).content
    assert user.wallet().balance == 100 - done.cost - again.cost - other.cost
    assert proc.poll() is None, workers.logs()
    # A first SIGTERM drains: with nothing running it exits at once, cleanly.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, workers.logs()


def test_the_model_is_loaded_once_and_inputs_are_downloaded(user, workers) -> None:
    workers.start(PROGRAM, "2")
    source = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(source, "PNG")
    material = user.upload_material(source.getvalue(), name="init.png")
    job = user.submit("image", "sdxl", "inputs", params={"init_image": material.id, "width": 256, "height": 256})
    done = finished(user, job.id, workers)
    assert done.state == "succeeded", (done, workers.logs())
    seen = json.loads(workers.wait_mark(f"{job.id}.inputs"))
    [given] = seen["inputs"]
    assert given["role"] == "init_image" and given["material_id"] == material.id
    assert given["content_type"] == "image/png" and bytes.fromhex(given["head"]) == PNG_MAGIC
    # The attempt's directory is gone once it ended.
    assert not Path(given["path"]).exists() and not Path(seen["output_dir"]).exists()
    jobs = [user.submit("image", "sdxl", f"picture {i}") for i in range(3)]
    for j in jobs:
        assert finished(user, j.id, workers).state == "succeeded"
    # Progress reaches the job's event stream while it runs.
    slow = user.submit("image", "sdxl", "slow 10")
    events = list(user.events(slow.id))
    percents = [e.percent for e in events if e.event == "progress"]
    assert [e.state for e in events if e.event == "state"][-1] == "succeeded"
    assert percents and percents == sorted(percents) and 0 < percents[-1] <= 100, events
    assert len((workers.marks / "setup.log").read_text().splitlines()) == 1


def test_a_cancel_reaches_the_running_handler_and_a_waiting_job_is_refunded(user, workers) -> None:
    workers.start(PROGRAM, "1")
    running = user.submit("image", "sdxl", "slow 600")
    workers.wait_mark(f"{running.id}.started")
    # The one slot is busy: this one waits, and a cancel voids its hold.
    waiting = user.submit("image", "sdxl", "a waiting fox")
    assert user.cancel(waiting.id).state == "cancelled"
    cancelled = user.cancel(running.id)
    assert cancelled.state == "cancelled"
    workers.wait_mark(f"{running.id}.cancelled")
    running_after = user.job(running.id)
    waiting_after = user.job(waiting.id)
    # In flight, its GPU time was used: charged; waiting: refunded in full.
    assert running_after.charge == "posted" and waiting_after.charge == "voided"
    wallet = user.wallet()
    assert (wallet.balance, wallet.held) == (100 - running.cost, 0)
    # The slot is free again once the handler stopped, and the cancelled
    # attempt reports nothing more: its job stays cancelled.
    next_job = finished(user, user.submit("image", "sdxl", "after the cancel").id, workers)
    assert next_job.state == "succeeded", workers.logs()
    assert user.job(running.id).state == "cancelled"
    assert not (workers.marks / f"{waiting.id}.started").exists()


def test_sigterm_drains_the_running_job_and_takes_no_new_one(user, workers) -> None:
    first = workers.start(PROGRAM, "1")
    job = user.submit("image", "sdxl", "slow 20")
    workers.wait_mark(f"{job.id}.started")
    first.send_signal(signal.SIGTERM)
    later = user.submit("image", "sdxl", "after the drain")
    assert first.wait(timeout=WAIT) == 0, workers.logs()
    done = user.job(job.id)
    assert done.state == "succeeded" and done.attempts == 1, (done, workers.logs())
    assert not (workers.marks / f"{later.id}.started").exists()
    # Nothing lost: the job that arrived meanwhile waits for the next worker.
    assert user.job(later.id).state == "queued"
    workers.start(PROGRAM, "1")
    assert finished(user, later.id, workers).state == "succeeded"


def test_a_second_sigterm_hands_the_attempt_back_for_a_retry(user, workers) -> None:
    first = workers.start(PROGRAM, "1")
    job = user.submit("image", "sdxl", "slow 600")
    workers.wait_mark(f"{job.id}.started")
    first.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=WAIT) == 1, workers.logs()
    # The server counts the abandoned attempt lost and retries it elsewhere.
    retried = wait_state(user, job.id, lambda j: j.state == "queued" and j.attempts == 1, workers)
    assert retried.error is not None and retried.error.class_ == "system"
    (workers.marks / f"{job.id}.started").unlink()
    workers.start(PROGRAM, "1")
    assert workers.wait_mark(f"{job.id}.started") == "2"
    user.cancel(job.id)


def test_handler_errors_fail_as_user_or_system(user, workers) -> None:
    workers.start(PROGRAM, "2")
    bad_input = user.submit("image", "sdxl", "user-error")
    crash = user.submit("image", "sdxl", "crash")
    failed = finished(user, bad_input.id, workers)
    assert failed.state == "failed" and failed.attempts == 1, (failed, workers.logs())
    assert failed.error.class_ == "user" and "cannot draw" in failed.error.message
    assert failed.charge == "posted"  # the input was at fault: charged, not retried
    crashed = finished(user, crash.id, workers)
    assert crashed.state == "failed" and crashed.charge == "voided", (crashed, workers.logs())
    assert crashed.attempts == crashed.max_attempts > 1  # retried, refunded after the last
    assert crashed.error.class_ == "system" and "RuntimeError: CUDA error" in crashed.error.message
    assert user.wallet().balance == 100 - bad_input.cost


def test_safety_labels_reach_the_server_which_withholds_what_reaches_its_threshold(user, workers) -> None:
    workers.start(PROGRAM, "1")
    job = user.submit("image", "sdxl", "unsafe", params={"count": 2})
    done = finished(user, job.id, workers)
    # One of two delivered: charged, the withheld one left out.
    assert done.state == "succeeded" and done.withheld_outputs == 1, (done, workers.logs())
    assert len(done.result.outputs) == 1
    assert user.download_output(job.id, 0).content.startswith(PNG_MAGIC)


def test_bad_arguments_are_refused_before_connecting() -> None:
    def draw(job: Job) -> None:
        pass

    for kwargs, why in [
        ({"url": "ftp://example.com"}, "ws:// or wss://"),
        ({"url": "127.0.0.1:8080"}, "ws:// or wss://"),
        ({"url": "ws://"}, "ws:// or wss://"),
        ({"token": ""}, "token must not be empty"),
        ({"token": "bad\ntoken"}, "visible ASCII"),
        ({"slots": 0}, "slots"),
        ({"slots": "2"}, "slots"),
        ({"kinds": ["audio"]}, "unknown job kind"),
        ({"kinds": []}, "at least one"),
        ({"vram_mb": -1}, "vram_mb"),
    ]:
        args = {"url": "ws://127.0.0.1:9", "token": "t", **kwargs}
        with pytest.raises(WorkerError, match=why):
            Worker(draw, **args)
    with pytest.raises(WorkerError, match="callable"):
        Worker("not a function", url="ws://127.0.0.1:9", token="t")  # type: ignore[arg-type]
    assert connect_url("HTTPS://gpu.example.com/") == "wss://gpu.example.com/v1/workers/connect"
    assert connect_url("http://127.0.0.1:8080") == "ws://127.0.0.1:8080/v1/workers/connect"


def test_progress_is_checked_and_stops_a_cancelled_handler(tmp_path) -> None:
    sent = []
    job = Job("j", 1, "image", "sdxl", "p", {}, 1, [], tmp_path, _report=lambda p, m: sent.append((p, m)))
    job.progress(0.5)
    job.progress(0.5)  # the same again is not sent twice
    job.progress(7, "past the end")
    with pytest.raises(TypeError):
        job.progress("half")  # type: ignore[arg-type]
    assert sent == [(50, None), (100, "past the end")]
    job.cancelled.set()
    with pytest.raises(Cancelled):
        job.progress(0.9)
    assert job.output(3) == tmp_path / "003.png"
    for n, category, score in [(1, "violence", 0.5), (0, "", 0.5), (0, "violence", 1.5), (0, "violence", "high")]:
        with pytest.raises(ValueError):
            job.label(n, category, score)  # type: ignore[arg-type]
    for _ in range(32):
        job.label(0, "violence", 0.1)
    with pytest.raises(ValueError, match="at most 32"):
        job.label(0, "violence", 0.1)


def test_a_wrong_token_or_endpoint_is_a_clear_error(gpu_server) -> None:
    def draw(job: Job) -> None:
        pass

    ws = gpu_server.url.replace("http://", "ws://")
    with pytest.raises(WorkerError, match="refused the worker token"):
        run(draw, url=ws, token="not-the-worker-token")
    with pytest.raises(WorkerError, match="no AdMedia worker endpoint"):
        run(draw, url=ws + "/elsewhere", token=WORKER_TOKEN)


class Proxy:
    """A TCP relay to the server whose connections the test can cut, as a
    network blip would, while both ends keep running."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.pairs: List[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.pairs += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for s in pairs:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.listener.close()
        self.cut()


def test_after_a_blip_a_lost_attempt_is_refused_and_stopped(gpu_server, user, workers) -> None:
    """The server keeps running while the connection drops: it counts the
    attempt lost and retries it; the worker presents it on reconnecting, is
    refused, stops the handler, and gets the retry as a new attempt."""
    port = int(gpu_server.url.rsplit(":", 1)[1])
    proxy = Proxy(port)
    try:
        workers.start(PROGRAM, "1", url=f"ws://127.0.0.1:{proxy.port}")
        job = user.submit("image", "sdxl", "slow 600")
        assert workers.wait_mark(f"{job.id}.started") == "1"
        proxy.cut()
        workers.wait_mark(f"{job.id}.cancelled")
        deadline = time.monotonic() + WAIT
        while (workers.marks / f"{job.id}.started").read_text() != "2":
            assert time.monotonic() < deadline, workers.logs()
            time.sleep(0.05)
        assert "refused presented attempt" in workers.logs()
        retried = user.job(job.id)
        assert retried.state in ("assigned", "running") and retried.attempts == 2, retried
        assert user.cancel(job.id).state == "cancelled"
    finally:
        proxy.close()


@pytest.fixture
def database_url() -> Iterator[str]:
    with _database() as url:
        yield url


def test_a_running_attempt_survives_a_server_restart(tmp_path, database_url) -> None:
    """PostgreSQL keeps the attempt across a restart: the worker keeps
    running it, presents it in its next hello, and it succeeds on its first
    attempt, charged once."""
    port = _free_port()
    env = _server_env(port, tmp_path, database_url)
    env["ADMEDIA_REPRESENT_GRACE"] = "30s"
    log = tmp_path / "admedia.log"
    proc = _start_server(env, log)
    server = Server(f"http://127.0.0.1:{port}", "postgres", log)
    (tmp_path / "w").mkdir()
    workers = Workers(server, tmp_path / "w")
    try:
        worker = workers.start(PROGRAM, "1")
        with server.new_user("restart") as user:
            job = user.submit("image", "sdxl", "slow 40")
            workers.wait_mark(f"{job.id}.started")
            wait_state(user, job.id, lambda j: j.state == "running", workers)
            # A deploy: the server dies mid-render and comes back on the same
            # database and address.
            proc.kill()
            proc.wait()
            proc = _start_server(env, log)
            done = finished(user, job.id, workers)
            assert done.state == "succeeded" and done.attempts == 1, (done, workers.logs(), log.read_text()[-3000:])
            assert user.wallet().balance == 100 - done.cost
            assert user.download_output(job.id, 0).content.startswith(PNG_MAGIC)
            assert [e.kind for e in user.ledger().entries if e.job_id == job.id].count("post") == 1
        assert worker.poll() is None and "took back 1 attempts" in workers.logs()
    finally:
        workers.stop_all()
        _stop(proc)
