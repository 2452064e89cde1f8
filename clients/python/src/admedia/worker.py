"""Serve a model as an AdMedia GPU worker, in one long-lived process.

    from admedia import worker

    def draw(job):                      # called once per attempt, in a thread
        for n in range(job.count):
            make_image(job.prompt, job.params).save(job.output(n))
            job.progress((n + 1) / job.count)

    worker.run(draw, kinds=["image"], models=["sdxl"], slots=1,
               url="ws://127.0.0.1:8080", token="...", setup=load_weights)

:func:`run` speaks the worker protocol (docs/worker-protocol.md) the way the
``admedia-worker`` agent does: ``hello`` with the capabilities, heartbeats,
``accept``, ``progress``, ``complete`` or ``fail`` per attempt, ``cancel``,
and a drain on SIGTERM or SIGINT (take nothing new, finish and report what
runs, then return; a second signal stops at once). The connection can drop
without costing the attempts: they keep running, and the next connection
(with backoff: 0.5 s doubling to 30 s, jittered, at most 5 s while attempts
are held) presents them in its ``hello``; the ones the server takes back
report as if nothing happened, the others are stopped.

Per attempt the worker makes a fresh directory, downloads the job's inputs
into it, calls the handler with a :class:`Job`, uploads what the handler
wrote into ``job.output_dir`` (in file-name order, or the paths it returns)
to the attempt's signed upload URLs, and completes the attempt with those
uploads; the directory is removed however the attempt ends. A handler that
raises :class:`UserError` fails the attempt as the input's fault (charged,
not retried); any other exception is a system failure (retried, refunded
after the last attempt).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import logging
import os
import random
import shutil
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.protocol import State
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException

__all__ = ["Cancelled", "Input", "Job", "UserError", "Worker", "WorkerError", "connect_url", "run"]

log = logging.getLogger("admedia.worker")

# The same bounds as the Rust agent, so the server's grace for re-presented
# attempts (sized for the agent) holds for this worker too: back within
# 5 s + a 10 s connect + a 10 s welcome.
CONNECT_TIMEOUT = 10.0
WELCOME_TIMEOUT = 10.0
FIRST_RETRY = 0.5
MAX_RETRY = 30.0
HOLDING_MAX_RETRY = 5.0
# A connection up this long counts as working again.
STABLE_AFTER = 10.0
# The protocol's frame limit, both ways.
MAX_FRAME = 64 * 1024
CLOSE_TIMEOUT = 2.0
# A heartbeat_ms of 0 (or nearly) would spin.
MIN_HEARTBEAT = 0.05
# Only bounds a transfer whose peer stops answering; deadlines stop attempts.
TRANSFER_TIMEOUT = 3600.0
CHUNK = 256 * 1024
# The protocol's slot range (the agent's --slots accepts the same).
MAX_SLOTS = 1024
KINDS = ("image", "video")
# Safety labels the server reads per output.
MAX_LABELS = 32
# A fail message the server keeps is cut to 2000 characters anyway.
MAX_MESSAGE = 2000


class WorkerError(Exception):
    """The worker cannot serve: refused token, not an AdMedia server, or a
    bad argument to :func:`run`."""


class UserError(Exception):
    """Raise from a handler when the job's input is at fault (an unreadable
    init image, a prompt the model refuses): the attempt fails with class
    ``user``, which is charged and not retried."""


class Cancelled(Exception):
    """Raised by :meth:`Job.progress` once the attempt was cancelled (by the
    user, its deadline, or the server refusing it after a reconnect), so a
    handler that reports progress stops at its next step by itself."""


@dataclass(frozen=True)
class Input:
    """One of the job's materials, downloaded before the handler runs."""

    role: str  # "init_image" or "reference_image"
    material_id: str
    content_type: str
    path: Path


@dataclass
class Job:
    """One attempt of a job, as the handler sees it."""

    job_id: str
    attempt: int
    kind: str
    model: str
    prompt: str
    params: Dict[str, Any]
    # How many files to write into output_dir.
    count: int
    inputs: List[Input]
    output_dir: Path
    # Set when the attempt is stopped; nothing more is reported about it.
    cancelled: threading.Event = field(default_factory=threading.Event)
    # time.monotonic() by which the attempt must end.
    deadline: float = float("inf")
    _report: Callable[[int, Optional[str]], None] = field(default=lambda p, m: None, repr=False)
    _last: Optional[Tuple[int, Optional[str]]] = field(default=None, repr=False)
    _safety: Dict[int, List[Dict[str, Any]]] = field(default_factory=dict, repr=False)

    @property
    def is_cancelled(self) -> bool:
        return self.cancelled.is_set()

    def progress(self, fraction: float, message: Optional[str] = None) -> None:
        """Reports how far the attempt is (0.0 to 1.0); clients see it as an
        SSE ``progress`` event. Raises :class:`Cancelled` once cancelled."""
        if self.cancelled.is_set():
            raise Cancelled(f"attempt {self.attempt} of job {self.job_id} was cancelled")
        try:
            value = float(fraction)
        except (TypeError, ValueError):
            raise TypeError(f"progress fraction must be a number, not {fraction!r}") from None
        if value != value:  # NaN
            value = 0.0
        percent = int(round(min(1.0, max(0.0, value)) * 100))
        text = None if message is None else _bounded(str(message), 512)
        # The same report twice says nothing new; spare the socket.
        if self._last == (percent, text):
            return
        self._last = (percent, text)
        self._report(percent, text)

    def label(self, n: int, category: str, score: float) -> None:
        """Your safety check's verdict on output ``n``: a score in 0..1 per
        category. The server (not the worker) withholds an output whose
        score reaches its threshold (docs/content-moderation.md)."""
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < self.count:
            raise ValueError(f"output {n!r} is not one of this job's {self.count} outputs")
        if not isinstance(category, str) or not category.strip():
            raise ValueError("a safety label needs a category")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0.0 <= score <= 1.0:
            raise ValueError(f"safety score {score!r} must be a number from 0 to 1")
        labels = self._safety.setdefault(n, [])
        if len(labels) >= MAX_LABELS:
            raise ValueError(f"at most {MAX_LABELS} safety labels per output")
        labels.append({"category": category.strip(), "score": float(score)})

    def output(self, n: int = 0, extension: str = "png") -> Path:
        """Where to write output ``n`` (``000.png``, ``001.png``, …): the
        files are uploaded in file-name order."""
        return self.output_dir / f"{n:03d}.{extension.lstrip('.')}"

    @property
    def seed(self) -> Optional[int]:
        seed = self.params.get("seed")
        return seed if isinstance(seed, int) else None

    @property
    def width(self) -> int:
        return int(self.params.get("width") or 512)

    @property
    def height(self) -> int:
        return int(self.params.get("height") or 512)


Handler = Callable[[Job], Optional[Sequence[Union[str, Path]]]]


def connect_url(server: str) -> str:
    """``ws://host:port[/prefix]`` → ``…/v1/workers/connect``; ``http://`` is
    taken as ``ws://`` and ``https://`` as ``wss://`` (as the agent does)."""
    if not isinstance(server, str):
        raise WorkerError(f"url must be a string such as ws://127.0.0.1:8080, not {server!r}")
    base = server.strip().rstrip("/")
    scheme, sep, rest = base.partition("://")
    scheme = scheme.lower() if sep else ""
    if not rest or any(c.isspace() for c in rest):
        scheme = ""
    if scheme in ("ws", "http"):
        return f"ws://{rest}/v1/workers/connect"
    if scheme in ("wss", "https"):
        return f"wss://{rest}/v1/workers/connect"
    raise WorkerError(f"url {server!r} must be a ws:// or wss:// URL, e.g. ws://127.0.0.1:8080")


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _sniff(head: bytes) -> str:
    """The type the server will read from the first bytes (it checks them)."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(head) >= 12 and head[0:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if len(head) >= 12 and head[4:8] == b"ftyp" and head[8:12] not in (b"qt  ", b"heic", b"heix", b"mif1", b"msf1", b"avif"):
        return "video/mp4"
    return "application/octet-stream"


_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "video/mp4": "mp4"}


class _Backoff:
    """Exponential with jitter, so a fleet that lost the server at once does
    not come back in lock step."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self.step = initial

    def next_delay(self) -> float:
        step = self.step
        self.step = min(self.step * 2, self.maximum)
        return step / 2 + step * random.random() / 2

    def reset(self) -> None:
        self.step = self.initial


Key = Tuple[str, str]  # (job_id, lease)


@dataclass
class _Running:
    attempt: int
    # The handler's job.cancelled: set on the loop, read in its thread.
    cancelled: threading.Event = field(default_factory=threading.Event)
    deadline: Optional[asyncio.TimerHandle] = None


@dataclass
class _Final:
    attempt: int
    message: Dict[str, Any]
    # When it was written to a connection; None while it was not. A written
    # one is kept for one heartbeat lease: the server may have died before
    # reading it, and presenting it again is how it still counts.
    sent_at: Optional[float] = None


class _Attempts:
    """The attempts held: at most ``slots``. The table outlives connections;
    what it holds is presented in the next ``hello``."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.running: Dict[Key, _Running] = {}
        self.finals: Dict[Key, _Final] = {}

    def occupied(self) -> int:
        # Finished attempts whose report was never written still count as
        # running on the server.
        return len(self.running) + sum(1 for f in self.finals.values() if f.sent_at is None)

    def is_full(self) -> bool:
        return self.occupied() >= self.slots

    def is_empty(self) -> bool:
        return self.occupied() == 0

    def holds(self, key: Key) -> bool:
        return key in self.running

    def stop(self, key: Key) -> bool:
        """Stops the attempt; nothing more is sent about it."""
        finished = self.finals.pop(key, None) is not None
        running = self.running.pop(key, None)
        if running is None:
            return finished
        _halt(running)
        return True

    def finish(self, key: Key, message: Dict[str, Any]) -> None:
        running = self.running.pop(key, None)
        if running is not None:
            if running.deadline is not None:
                running.deadline.cancel()
            self.finals[key] = _Final(running.attempt, message)

    def sent(self, key: Key) -> None:
        final = self.finals.get(key)
        if final is not None:
            final.sent_at = time.monotonic()

    def forget_delivered(self, lease: float) -> None:
        now = time.monotonic()
        self.finals = {k: f for k, f in self.finals.items() if f.sent_at is None or now - f.sent_at < lease}

    def presented(self) -> List[Dict[str, Any]]:
        """At most one per slot: running and unwritten first, then the most
        recently written reports."""

        def present(key: Key, attempt: int) -> Dict[str, Any]:
            return {"job_id": key[0], "attempt": attempt, "lease": key[1]}

        out = [present(k, r.attempt) for k, r in self.running.items()]
        out += [present(k, f.attempt) for k, f in self.finals.items() if f.sent_at is None]
        written = sorted(
            ((k, f) for k, f in self.finals.items() if f.sent_at is not None),
            key=lambda kf: -(kf[1].sent_at or 0.0),
        )
        out += [present(k, f.attempt) for k, f in written]
        return out[: self.slots]

    def keep_only(self, resumed: Iterable[Key]) -> List[Tuple[Key, Dict[str, Any]]]:
        """After a ``welcome``: what the server took back stays (its kept
        reports are returned to be sent again); everything else stops."""
        kept = set(resumed)
        for key in [k for k in self.running if k not in kept]:
            log.warning("attempt of job %s not taken back by the server; stopped", key[0])
            _halt(self.running.pop(key))
        self.finals = {k: f for k, f in self.finals.items() if k in kept}
        return [(k, f.message) for k, f in self.finals.items()]

    def stop_all(self) -> int:
        count = len(self.running)
        for running in self.running.values():
            _halt(running)
        self.running.clear()
        return count


def _halt(running: _Running) -> None:
    if running.deadline is not None:
        running.deadline.cancel()
    running.cancelled.set()


RUNNING, DRAIN, ABORT = "running", "drain", "abort"


class _Lost(Exception):
    def __init__(self, reason: str, welcomed: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.welcomed = welcomed


class _Aborted(Exception):
    """A second signal: attempts were abandoned."""


class _Fatal(Exception):
    """Before any welcome: a refusal that retrying cannot fix."""


class _Redirect(Exception):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


class Worker:
    """A worker process: the model, a pool of ``slots`` handler threads and
    one connection at a time. :func:`run` is ``Worker(...).run()``."""

    def __init__(
        self,
        handler: Handler,
        *,
        kinds: Union[str, Sequence[str]] = ("image",),
        models: Sequence[str] = (),
        slots: int = 1,
        url: Optional[str] = None,
        token: Optional[str] = None,
        setup: Optional[Callable[[], Any]] = None,
        name: Optional[str] = None,
        gpu_model: str = "",
        vram_mb: int = 80_000,
        loaded_models: Optional[Sequence[str]] = None,
        handle_signals: bool = True,
    ) -> None:
        if not callable(handler):
            raise WorkerError(f"handler must be callable (a function or an object with __call__), not {handler!r}")
        if isinstance(kinds, str):
            kinds = [kinds]
        chosen: List[str] = []
        for kind in kinds:
            if kind not in KINDS:
                raise WorkerError(f"unknown job kind {kind!r} (image or video)")
            if kind not in chosen:
                chosen.append(kind)
        if not chosen:
            raise WorkerError("kinds must name at least one of image, video")
        if isinstance(slots, bool) or not isinstance(slots, int) or not 1 <= slots <= MAX_SLOTS:
            raise WorkerError(f"slots must be a whole number from 1 to {MAX_SLOTS}, not {slots!r}")
        if isinstance(vram_mb, bool) or not isinstance(vram_mb, int) or not 0 <= vram_mb <= 0xFFFFFFFF:
            raise WorkerError(f"vram_mb must be a whole number of MB, not {vram_mb!r}")
        if isinstance(models, str):
            models = [models]
        self.url = connect_url(url if url is not None else os.environ.get("ADMEDIA_SERVER_URL", "ws://127.0.0.1:8080"))
        token = token if token is not None else os.environ.get("ADMEDIA_WORKER_TOKEN", "")
        if not isinstance(token, str) or not token.strip():
            raise WorkerError("token must not be empty: give the server's ADMEDIA_WORKER_TOKEN (token=… or the environment)")
        if not all(" " <= c <= "~" for c in token):
            raise WorkerError("token must be visible ASCII characters")
        self.authorization = f"Bearer {token}"
        self.handler = handler
        self.setup = setup
        self.kinds = chosen
        self.slots = slots
        models = [m.strip() for m in models if isinstance(m, str) and m.strip()]
        loaded = models if loaded_models is None else [m.strip() for m in loaded_models if m.strip()]
        self.hello: Dict[str, Any] = {
            "type": "hello",
            "name": name or f"{socket.gethostname() or 'worker'}-{os.getpid()}",
            "slots": slots,
            "gpu_model": gpu_model,
            "vram_mb": vram_mb,
            "kinds": chosen,
            "models": models,
            "loaded_models": loaded,
        }
        self.handle_signals = handle_signals
        self.attempts = _Attempts(slots)
        self.state = RUNNING
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._changed: Optional[asyncio.Event] = None
        self._reports: Deque[Tuple[Key, Dict[str, Any], bool]] = collections.deque()
        self._reports_ready: Optional[asyncio.Event] = None
        self._pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._signals = 0
        self._ever_welcomed = False

    # -- the process ------------------------------------------------------

    def run(self) -> None:
        """Loads the model (``setup()``, or the handler's ``load()``), then
        serves until a drain ends. Raises :class:`WorkerError` when the server
        refuses this worker before ever welcoming it."""
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        load = self.setup or getattr(self.handler, "load", None)
        if callable(load):
            log.info("loading the model")
            load()
        try:
            asyncio.run(self._main())
        except _Aborted:
            # As the agent exits non-zero: whatever still ran was abandoned
            # (the server counts those attempts lost and retries them).
            raise SystemExit(1) from None

    def drain(self) -> None:
        """As a first SIGTERM does (safe from any thread): take nothing new,
        finish and report what runs, then let :meth:`run` return."""
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._signal, "drain()")

    def _signal(self, name: str) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("%s: draining (signal again to stop at once)", name)
            self._set_state(DRAIN)
        else:
            log.warning("%s again: stopping at once", name)
            self._set_state(ABORT)

    def _set_state(self, state: str) -> None:
        self.state = state
        if self._changed is not None:
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    async def _stop_requested(self, draining: bool) -> str:
        """Any shutdown, or only an abort while a drain reconnects to report
        what it still holds."""
        while True:
            changed = self._changed
            assert changed is not None
            if self.state != RUNNING and (not draining or self.state == ABORT):
                return self.state
            await changed.wait()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._reports_ready = asyncio.Event()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix="admedia-job")
        installed = []
        if self.handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    self._loop.add_signal_handler(sig, self._signal, sig.name)
                except NotImplementedError:
                    # No loop signal handlers (Windows): a plain handler
                    # that hands the signal to the loop.
                    loop = self._loop
                    signal.signal(sig, lambda n, _f: loop.call_soon_threadsafe(self._signal, signal.Signals(n).name))
                installed.append(sig)
        try:
            await self._serve()
        finally:
            for sig in installed:
                try:
                    self._loop.remove_signal_handler(sig)
                except NotImplementedError:
                    signal.signal(sig, signal.SIG_DFL)
            abandoned = self.attempts.stop_all()
            if abandoned:
                log.warning("%d attempts abandoned", abandoned)
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def _serve(self) -> None:
        backoff = _Backoff(FIRST_RETRY, MAX_RETRY)
        configured = self.url
        while True:
            started = time.monotonic()
            try:
                await self._session()
                return  # drained
            except _Redirect as r:
                try:
                    self.url = connect_url(r.url)
                except WorkerError as e:
                    log.warning("unusable redirect (%s); keeping the configured server", e)
                await asyncio.sleep(FIRST_RETRY)
                continue
            except _Fatal as e:
                raise WorkerError(str(e)) from None
            except _Lost as lost:
                if not lost.welcomed and self.url != configured:
                    log.info("redirect target unreachable; back to %s", configured)
                    self.url = configured
                if self.state == ABORT:
                    raise _Aborted()
                if self.state == DRAIN and self.attempts.is_empty():
                    log.info("connection lost while draining (%s); done", lost.reason)
                    return
                if lost.welcomed and time.monotonic() - started >= STABLE_AFTER:
                    backoff.reset()
                delay = backoff.next_delay()
                if not self.attempts.is_empty():
                    delay = min(delay, HOLDING_MAX_RETRY)
                if lost.welcomed:
                    log.warning("connection lost (%s); reconnecting in %.1f s, holding %d",
                                lost.reason, delay, self.attempts.occupied())
                else:
                    log.warning("could not connect (%s); retrying in %.1f s, holding %d",
                                lost.reason, delay, self.attempts.occupied())
            draining = self.state == DRAIN
            stop = asyncio.ensure_future(self._stop_requested(draining))
            done, _ = await asyncio.wait({stop}, timeout=delay)
            if not done:
                stop.cancel()
                continue
            state = stop.result()
            if state == ABORT:
                raise _Aborted()
            if self.attempts.is_empty():
                log.info("shutdown while disconnected; done")
                return
            # Draining with attempts held: reconnect at once to report them.

    # -- one connection ---------------------------------------------------

    async def _session(self) -> None:
        """One connection; returns when drained, raises how it ended
        otherwise."""
        draining = self.state == DRAIN
        if draining and self.attempts.is_empty():
            return
        log.info("connecting to %s", self.url)
        try:
            ws = await self._until_stopped(self._connect(), draining)
        except _Stopped as s:
            if s.state == ABORT:
                raise _Aborted()
            return
        try:
            hello = dict(self.hello)
            presented = self.attempts.presented()
            if presented:
                hello["attempts"] = presented
            try:
                welcome = await self._until_stopped(self._handshake(ws, hello), draining)
            except _Stopped as s:
                await self._close(ws)
                if s.state == ABORT:
                    raise _Aborted()
                return
            self._ever_welcomed = True
            for refused in _dicts(welcome.get("refused")):
                log.warning("the server refused presented attempt of job %s: %s",
                            refused.get("job_id"), refused.get("reason"))
            resumed = [(r.get("job_id"), r.get("lease")) for r in _dicts(welcome.get("resumed"))]
            resend = self.attempts.keep_only(resumed)  # type: ignore[arg-type]
            if resumed:
                log.info("the server took back %d attempts this worker holds", len(resumed))
            heartbeat = max(MIN_HEARTBEAT, _seconds(welcome.get("heartbeat_ms"), 5.0))
            session = _Session(self, ws, _seconds(welcome.get("lease_ms"), 15.0))
            for key, message in resend:
                if await session.send_final(key, message):
                    return
            if draining and await session.on_shutdown(DRAIN):
                return
            await session.loop(heartbeat)
        except ConnectionClosed as e:
            raise _Lost(f"the server closed the connection ({e})") from None
        except OSError as e:
            raise _Lost(f"connection error: {e}") from None
        finally:
            # Whatever happened, this connection is done with.
            if ws.state is not State.CLOSED:
                await self._close(ws)

    async def _until_stopped(self, work: Any, draining: bool) -> Any:
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self._stop_requested(draining))
        done, _ = await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            stop.cancel()
            return task.result()
        task.cancel()
        try:
            await task
        except BaseException:
            pass
        raise _Stopped(stop.result())

    async def _connect(self) -> ClientConnection:
        try:
            return await connect(
                self.url,
                additional_headers={"Authorization": self.authorization},
                open_timeout=CONNECT_TIMEOUT,
                close_timeout=CLOSE_TIMEOUT,
                max_size=MAX_FRAME,
                # Heartbeats are the protocol's own messages.
                ping_interval=None,
                compression=None,
                user_agent_header="admedia-python-worker",
            )
        except InvalidStatus as e:
            status = e.response.status_code
            body = e.response.body.decode("utf-8", "replace")[:300] if e.response.body else ""
            if status == 401 and not self._ever_welcomed:
                raise _Fatal(f"the server refused the worker token (401 unauthorized) at {self.url}: "
                             "give the server's ADMEDIA_WORKER_TOKEN") from None
            if status == 404 and not self._ever_welcomed:
                raise _Fatal(f"no AdMedia worker endpoint at {self.url} (404): is the url the orchestrator's?") from None
            raise _Lost(f"the server answered the upgrade with HTTP {status} {body}".strip(), welcomed=False) from None
        except InvalidURI as e:
            raise _Fatal(f"url {self.url!r} is not a valid WebSocket URL: {e}") from None
        except asyncio.TimeoutError:
            raise _Lost(f"no connection within {CONNECT_TIMEOUT:.0f} s", welcomed=False) from None
        except (OSError, WebSocketException) as e:
            raise _Lost(f"cannot connect: {e}", welcomed=False) from None

    async def _handshake(self, ws: ClientConnection, hello: Dict[str, Any]) -> Dict[str, Any]:
        try:
            await ws.send(json.dumps(hello))
            return await asyncio.wait_for(self._welcome(ws), WELCOME_TIMEOUT)
        except asyncio.TimeoutError:
            raise _Lost(f"no welcome within {WELCOME_TIMEOUT:.0f} s", welcomed=False) from None
        except ConnectionClosed as e:
            raise _Lost(f"the server closed the connection before welcome ({e})", welcomed=False) from None

    async def _welcome(self, ws: ClientConnection) -> Dict[str, Any]:
        while True:
            raw = await ws.recv()
            if not isinstance(raw, str):
                continue
            try:
                message = json.loads(raw)
            except ValueError:
                log.warning("unreadable message before welcome, ignored")
                continue
            kind = message.get("type") if isinstance(message, dict) else None
            if kind == "welcome":
                log.info("welcomed as %s", message.get("worker_id"))
                return message
            if kind == "error":
                # Also what a node says before it leads ("no active
                # scheduler yet"): retried like a failed connect.
                raise _Lost(f"the server refused hello: {message.get('message')}", welcomed=False)
            if kind == "redirect" and isinstance(message.get("url"), str):
                log.info("this node stands by; following it to %s", message["url"])
                await self._close(ws)
                raise _Redirect(message["url"])
            log.warning("ignored before welcome: %s", kind)

    async def _close(self, ws: ClientConnection) -> None:
        # Close frames both ways before dropping the TCP connection: dropping
        # at once can lose the last frames sent (a drain's final complete).
        try:
            await asyncio.wait_for(ws.close(), CLOSE_TIMEOUT + 1)
        except Exception:  # noqa: BLE001 - the connection is dropped either way
            pass

    # -- attempts (the loop's side) ---------------------------------------

    def start(self, message: Dict[str, Any]) -> None:
        key: Key = (message["job_id"], message["lease"])
        attempt = message.get("attempt")
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise ValueError(f"attempt {attempt!r} is not an attempt number")
        running = _Running(attempt)
        self.attempts.running[key] = running
        assert self._loop is not None and self._pool is not None
        deadline_ms = message.get("deadline_ms")
        seconds = float(deadline_ms) / 1000 if isinstance(deadline_ms, (int, float)) and deadline_ms >= 0 else None
        if seconds is not None and seconds < 1e9:
            running.deadline = self._loop.call_later(seconds, self._deadline_passed, key)

        def report(percent: int, text: Optional[str]) -> None:
            progress: Dict[str, Any] = {"type": "progress", "job_id": key[0], "lease": key[1], "percent": percent}
            if text is not None:
                progress["message"] = text
            self._push(key, progress, False)

        deadline = time.monotonic() + seconds if seconds is not None else float("inf")
        self._pool.submit(self._execute, key, message, deadline, report, running.cancelled)

    def _deadline_passed(self, key: Key) -> None:
        running = self.attempts.running.get(key)
        if running is None:
            return
        running.cancelled.set()
        log.warning("attempt of job %s passed its deadline; stopped", key[0])
        self._push(key, _fail(key, "system", "deadline passed"), True)

    def _push(self, key: Key, message: Dict[str, Any], last: bool) -> None:
        """From any thread: queue a report for the connection."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        def put() -> None:
            self._reports.append((key, message, last))
            if self._reports_ready is not None:
                self._reports_ready.set()

        try:
            loop.call_soon_threadsafe(put)
        except RuntimeError:
            pass  # the loop is gone, and with it any interest in this attempt

    # -- attempts (the handler's thread) ----------------------------------

    def _execute(self, key: Key, message: Dict[str, Any], deadline: float,
                 report: Callable[[int, Optional[str]], None], cancelled: threading.Event) -> None:
        if cancelled.is_set():
            return  # stopped while it waited for a thread
        root = Path(tempfile.mkdtemp(prefix=f"admedia-{key[0]}-{message.get('attempt')}-"))
        try:
            outcome = self._attempt(root, key, message, deadline, report, cancelled)
        except Exception as e:  # noqa: BLE001 - any error of ours fails the attempt, retried
            log.exception("attempt of job %s failed", key[0])
            outcome = _fail(key, "system", f"{type(e).__name__}: {e}")
        finally:
            shutil.rmtree(root, ignore_errors=True)
        if outcome is not None and not cancelled.is_set():
            self._push(key, outcome, True)

    def _attempt(self, root: Path, key: Key, message: Dict[str, Any], deadline: float,
                 report: Callable[[int, Optional[str]], None],
                 cancelled: threading.Event) -> Optional[Dict[str, Any]]:
        in_dir, out_dir = root / "in", root / "out"
        in_dir.mkdir()
        out_dir.mkdir()
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        slots = [s for s in message.get("outputs") or [] if isinstance(s, dict)]
        kind = str(message.get("kind") or "")
        count = len(slots) or (1 if kind == "video" else int(params.get("count") or 1))
        job = Job(
            job_id=key[0], attempt=int(message.get("attempt") or 0), kind=kind,
            model=str(message.get("model") or ""), prompt=str(message.get("prompt") or ""),
            params=params, count=count, inputs=[], output_dir=out_dir,
            cancelled=cancelled, deadline=deadline, _report=report,
        )
        with httpx.Client(timeout=TRANSFER_TIMEOUT) as http:
            for i, spec in enumerate(message.get("inputs") or []):
                if cancelled.is_set():
                    return None
                role = str(spec.get("role") or "input")
                content_type = str(spec.get("content_type") or "")
                path = in_dir / f"{i}-{role}.{_EXTENSIONS.get(content_type, 'bin')}"
                _download(http, spec, path)
                job.inputs.append(Input(role, str(spec.get("material_id") or ""), content_type, path))
            if cancelled.is_set():
                return None
            try:
                named = self.handler(job)
            except UserError as e:
                return _fail(key, "user", str(e) or "the job's input was refused")
            except Cancelled:
                return None
            if cancelled.is_set():
                return None
            if not slots:
                return _fail(key, "system", "the server sent no upload URLs for this job's outputs")
            files = _outputs(out_dir, named)
            if len(files) != len(slots):
                return _fail(key, "system", f"the handler wrote {len(files)} output file(s); the job asked for {len(slots)}")
            outputs = []
            for n, (path, slot) in enumerate(zip(files, sorted(slots, key=lambda s: int(s.get("index") or 0)))):
                if cancelled.is_set():
                    return None
                output: Dict[str, Any] = {"url": slot["key"], "content_type": _upload(http, path, slot)}
                if job._safety.get(n):
                    output["safety"] = job._safety[n]
                outputs.append(output)
        return {"type": "complete", "job_id": key[0], "lease": key[1], "outputs": outputs}


class _Stopped(Exception):
    def __init__(self, state: str) -> None:
        super().__init__(state)
        self.state = state


def _dicts(value: Any) -> List[Dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _seconds(ms: Any, default: float) -> float:
    """A duration in milliseconds from the server, as seconds; a value that
    is not a number is taken as the protocol's default."""
    if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not 0 <= ms < 1e12:
        return default
    return ms / 1000


def _fail(key: Key, class_: str, message: str) -> Dict[str, Any]:
    return {"type": "fail", "job_id": key[0], "lease": key[1], "class": class_,
            "message": _bounded(message, MAX_MESSAGE)}


def _outputs(out_dir: Path, named: Any) -> List[Path]:
    """The files to upload: those the handler named (each inside the output
    directory), else every file it wrote there, by name."""
    if named is None:
        return sorted(p for p in out_dir.iterdir() if p.is_file())
    if isinstance(named, (str, Path)):
        named = [named]
    root = out_dir.resolve()
    files = []
    for item in named:
        path = Path(item).resolve()
        if root not in path.parents or not path.is_file():
            raise ValueError(f"output {item} is not a file in the output directory")
        files.append(path)
    return files


def _download(http: httpx.Client, spec: Dict[str, Any], path: Path) -> None:
    what = f"{spec.get('role')} {spec.get('material_id')}"
    with http.stream("GET", str(spec.get("url") or "")) as response:
        if response.status_code >= 300:
            raise OSError(f"downloading {what}: HTTP {response.status_code}")
        with open(path, "wb") as out:
            for chunk in response.iter_bytes(CHUNK):
                out.write(chunk)


def _upload(http: httpx.Client, path: Path, slot: Dict[str, Any]) -> str:
    """PUTs the file with its length (the object store refuses a chunked
    upload); returns the type its first bytes say."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)

    def body() -> Iterable[bytes]:
        with open(path, "rb") as f:
            while True:
                chunk = f.read(CHUNK)
                if not chunk:
                    return
                yield chunk

    response = http.put(str(slot.get("upload_url") or ""), content=body(), headers={"Content-Length": str(size)})
    if response.status_code >= 300:
        raise OSError(f"uploading output {slot.get('index')}: HTTP {response.status_code} {response.text[:200]}")
    return _sniff(head)


class _Session:
    """A welcomed connection: one loop over the server's messages, the
    attempts' reports, heartbeats and the shutdown state."""

    def __init__(self, worker: Worker, ws: ClientConnection, lease: float) -> None:
        self.w = worker
        self.ws = ws
        self.lease = lease
        self.draining = False
        self.server_draining = False

    async def send(self, message: Dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message, separators=(",", ":")))

    async def loop(self, heartbeat: float) -> None:
        w = self.w
        assert w._reports_ready is not None
        recv = asyncio.ensure_future(self.ws.recv())
        tick = asyncio.ensure_future(asyncio.sleep(heartbeat))
        ready = asyncio.ensure_future(w._reports_ready.wait())
        stop = asyncio.ensure_future(self._state_changed())
        try:
            while True:
                done, _ = await asyncio.wait({recv, tick, ready, stop}, return_when=asyncio.FIRST_COMPLETED)
                if recv in done:
                    raw = recv.result()  # raises ConnectionClosed when it ended
                    recv = asyncio.ensure_future(self.ws.recv())
                    if await self.on_frame(raw):
                        return
                if ready in done:
                    w._reports_ready.clear()
                    ready = asyncio.ensure_future(w._reports_ready.wait())
                    while w._reports:
                        key, message, last = w._reports.popleft()
                        if await self.on_report(key, message, last):
                            return
                if tick in done:
                    tick = asyncio.ensure_future(asyncio.sleep(heartbeat))
                    w.attempts.forget_delivered(self.lease)
                    await self.send({"type": "heartbeat"})
                if stop in done:
                    state = stop.result()
                    stop = asyncio.ensure_future(self._state_changed())
                    if await self.on_shutdown(state):
                        return
        finally:
            for task in (recv, tick, ready, stop):
                task.cancel()
            if w._reports:
                w._reports_ready.set()

    async def _state_changed(self) -> str:
        changed = self.w._changed
        assert changed is not None
        await changed.wait()
        return self.w.state

    async def on_frame(self, raw: Union[str, bytes]) -> bool:
        if not isinstance(raw, str):
            log.warning("binary frame from the server, ignored")
            return False
        try:
            message = json.loads(raw)
        except ValueError:
            log.warning("unreadable message from the server, ignored")
            return False
        if not isinstance(message, dict):
            return False
        try:
            return await self.on_message(message)
        except (KeyError, TypeError, ValueError) as e:
            # Perhaps a newer server; the connection is still good.
            log.warning("malformed %s message from the server, ignored: %s", message.get("type"), e)
            return False

    async def on_message(self, message: Dict[str, Any]) -> bool:
        kind = message.get("type")
        if kind == "assign":
            await self.on_assign(message)
        elif kind == "cancel":
            key = (message.get("job_id"), message.get("lease"))
            if self.w.attempts.stop(key):  # type: ignore[arg-type]
                log.info("attempt of job %s cancelled", key[0])
                return await self.drained_yet()
        elif kind == "drain":
            log.info("the server asked this worker to drain: taking no new attempts")
            self.server_draining = True
        elif kind == "error":
            log.warning("the server refused a message: %s", message.get("message"))
        else:
            log.warning("unexpected %s after welcome, ignored", kind)
        return False

    async def on_assign(self, message: Dict[str, Any]) -> None:
        job_id, lease = message.get("job_id"), message.get("lease")
        if not isinstance(job_id, str) or not isinstance(lease, str):
            log.warning("assign without a job id or lease, ignored")
            return
        key = (job_id, lease)
        w = self.w
        if w.attempts.holds(key):
            log.warning("duplicate assign of a running attempt of job %s, ignored", job_id)
            return
        if self.draining or self.server_draining:
            refusal: Optional[str] = "draining"
        elif message.get("kind") not in w.kinds:
            refusal = f"this worker does not serve {message.get('kind')} jobs"
        elif w.attempts.is_full():
            refusal = "no free slot"
        else:
            refusal = None
        if refusal is not None:
            log.info("assignment of job %s refused: %s", job_id, refusal)
            await self.send(_fail(key, "system", refusal))
            return
        log.info("attempt %s of job %s started (%s, %s)", message.get("attempt"), job_id,
                 message.get("kind"), message.get("model"))
        w.start(message)
        await self.send({"type": "accept", "job_id": job_id, "lease": lease})

    async def on_report(self, key: Key, message: Dict[str, Any], last: bool) -> bool:
        # Cancelled (or ended by its deadline) while the report was queued:
        # say nothing more about it.
        if not self.w.attempts.holds(key):
            return False
        if last:
            return await self.send_final(key, _fit_frame(message))
        await self.send(message)
        return False

    async def send_final(self, key: Key, message: Dict[str, Any]) -> bool:
        """The attempt's last report; kept until known delivered, so a
        connection lost meanwhile presents it again."""
        self.w.attempts.finish(key, message)
        if message.get("type") == "complete":
            log.info("attempt of job %s completed with %d outputs", key[0], len(message.get("outputs") or []))
        else:
            log.info("attempt of job %s failed (%s): %s", key[0], message.get("class"), message.get("message"))
        await self.send(message)
        self.w.attempts.sent(key)
        return await self.drained_yet()

    async def on_shutdown(self, state: str) -> bool:
        if state == DRAIN:
            if not self.draining:
                self.draining = True
                log.info("draining: finishing %d running attempts, taking no new ones", self.w.attempts.occupied())
                await self.send({"type": "drain"})
            return await self.drained_yet()
        if state == ABORT:
            log.warning("stopping without waiting for %d running attempts", self.w.attempts.occupied())
            await self.w._close(self.ws)
            raise _Aborted()
        return False

    async def drained_yet(self) -> bool:
        if self.draining and self.w.attempts.is_empty():
            log.info("drained: every attempt reported; closing the connection")
            await self.w._close(self.ws)
            return True
        return False


def _fit_frame(message: Dict[str, Any]) -> Dict[str, Any]:
    """A complete too large for one frame would be refused and leave the job
    to time out; fail it now instead, so it is retried."""
    if message.get("type") != "complete":
        return message
    size = len(json.dumps(message, separators=(",", ":")))
    if size <= MAX_FRAME:
        return message
    return _fail((message["job_id"], message["lease"]), "system",
                 f"the outputs ({size} bytes of JSON) exceed the {MAX_FRAME}-byte frame limit")


def run(
    handler: Handler,
    *,
    kinds: Union[str, Sequence[str]] = ("image",),
    models: Sequence[str] = (),
    slots: int = 1,
    url: Optional[str] = None,
    token: Optional[str] = None,
    setup: Optional[Callable[[], Any]] = None,
    name: Optional[str] = None,
    gpu_model: str = "",
    vram_mb: int = 80_000,
    loaded_models: Optional[Sequence[str]] = None,
) -> None:
    """Serves ``handler`` as a GPU worker until SIGTERM/SIGINT drains it.

    ``handler(job)`` runs once per attempt in one of ``slots`` threads of this
    process; it writes ``job.count`` files into ``job.output_dir`` (or
    returns their paths), calls ``job.progress(fraction)`` as it goes, and
    raises :class:`UserError` when the input is at fault. ``setup()`` (or
    the handler's ``load()`` method) runs once before connecting, so the
    model is loaded once. ``url`` and ``token`` default to
    ``ADMEDIA_SERVER_URL`` and ``ADMEDIA_WORKER_TOKEN``; ``models`` empty
    serves any model; ``vram_mb`` is the GPU memory the server places jobs
    by. Bad arguments, a refused token or a URL that is no AdMedia server
    raise :class:`WorkerError`.
    """
    Worker(
        handler, kinds=kinds, models=models, slots=slots, url=url, token=token, setup=setup,
        name=name, gpu_model=gpu_model, vram_mb=vram_mb, loaded_models=loaded_models,
    ).run()
