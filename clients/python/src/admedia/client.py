"""The synchronous :class:`Client` and the asynchronous :class:`AsyncClient`.

Both have the same methods (the async ones are coroutines or async
iterators). Submissions always carry an idempotency key (one is made when
none is given), so transport errors and ``503 unavailable`` are retried
safely, after ``Retry-After`` when the server sends one; reads are retried
the same way; other calls are sent once.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, AsyncIterator, Dict, Iterable, Iterator, List, Optional

import httpx

from . import _core
from ._core import Call, Calls, JobLike
from .errors import ApiError
from .models import (
    ApiKey,
    BatchResult,
    Download,
    IssuedKey,
    WebhookDelivery,
    WebhookEndpoint,
    Job,
    JobEvent,
    JobPage,
    JobRequest,
    LedgerPage,
    Material,
    Me,
    Registration,
    Wallet,
)

USER_AGENT = "admedia-python/0.1.0"


def _base_url(base_url: Optional[str]) -> str:
    return (base_url or os.environ.get("ADMEDIA_URL") or _core.DEFAULT_BASE_URL).rstrip("/")


def _job(kind: Any, model: Optional[str], prompt: Optional[str], **rest: Any) -> JobRequest:
    if isinstance(kind, JobRequest):
        return kind
    if isinstance(kind, dict):
        return _core.job_request(kind)
    if model is None or prompt is None:
        raise TypeError("submit needs kind, model and prompt (or a JobRequest)")
    return JobRequest(kind=kind, model=model, prompt=prompt, **rest)


class Client:
    """The user API, synchronously.

    ``api_key`` defaults to ``$ADMEDIA_API_KEY``, ``base_url`` to
    ``$ADMEDIA_URL``. A client without a key can only :meth:`register`.
    """

    def __init__(
        self,
        api_key: Optional[str] = None,
        base_url: Optional[str] = None,
        *,
        timeout: float = _core.DEFAULT_TIMEOUT,
        max_retries: int = _core.DEFAULT_MAX_RETRIES,
        transport: Optional[httpx.BaseTransport] = None,
    ) -> None:
        self.api_key = api_key if api_key is not None else os.environ.get("ADMEDIA_API_KEY")
        self.base_url = _base_url(base_url)
        self.max_retries = max_retries
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=_core.headers(self.api_key, USER_AGENT),
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _run(self, call: Call) -> Any:
        attempt = 0
        while True:
            try:
                res = self._http.request(
                    call.method, call.path, params=call.params, json=call.json,
                    content=call.content, headers=call.headers,
                    follow_redirects=call.follow_redirects,
                )
            except httpx.TransportError:
                if not _core.should_retry(call, attempt, self.max_retries, None):
                    raise
                time.sleep(_core.backoff(attempt, None))
                attempt += 1
                continue
            if _core.should_retry(call, attempt, self.max_retries, res):
                time.sleep(_core.backoff(attempt, res))
                attempt += 1
                continue
            return call.parse(res)

    def register(self, email: str, display_name: str) -> Registration:
        """Opens an account; the returned ``api_key`` is shown this once."""
        return self._run(Calls.register(email, display_name))

    def me(self) -> Me:
        return self._run(Calls.me())

    def webhook_secret(self) -> str:
        """The ``whsec_...`` secret the job webhooks are signed with."""
        return self._run(Calls.webhook_secret())

    def wallet(self) -> Wallet:
        return self._run(Calls.wallet())

    def ledger(self, *, limit: Optional[int] = None, before: Optional[str] = None) -> LedgerPage:
        return self._run(Calls.ledger(limit, before))

    def submit(
        self,
        kind: Any,
        model: Optional[str] = None,
        prompt: Optional[str] = None,
        *,
        params: Optional[Dict[str, Any]] = None,
        webhook_url: Optional[str] = None,
        idempotency_key: Optional[str] = None,
    ) -> Job:
        """Submits a job (``kind, model, prompt`` or a :class:`JobRequest`);
        its cost is held at once."""
        job = _job(kind, model, prompt, params=params, webhook_url=webhook_url, idempotency_key=idempotency_key)
        return self._run(Calls.submit(job))

    def submit_batch(self, jobs: Iterable[JobLike]) -> List[BatchResult]:
        """Submits up to 100 jobs at once; one result per job, in order. A
        refused job has ``error`` set and does not stop the others."""
        return self._run(Calls.submit_batch(jobs))

    def job(self, job_id: str) -> Job:
        return self._run(Calls.job(job_id))

    get_job = job

    def jobs(
        self, *, state: Optional[str] = None, limit: Optional[int] = None, before: Optional[str] = None
    ) -> JobPage:
        """The caller's jobs, newest first; pass ``page.next`` as ``before``."""
        return self._run(Calls.jobs(state, limit, before))

    list_jobs = jobs

    def cancel(self, job_id: str) -> Job:
        return self._run(Calls.cancel(job_id))

    def events(
        self,
        job_id: Optional[str] = None,
        *,
        last_event_id: Optional[str] = None,
        max_reconnects: Optional[int] = None,
    ) -> Iterator[JobEvent]:
        """With ``job_id``: that job's events as they happen; ends after
        the terminal state. Without: every job event of the account
        (``GET /v1/events``), for as long as it is iterated; when the
        connection drops it reconnects with ``Last-Event-ID`` (the last
        ``id`` received, or ``last_event_id`` to begin with), so no kept
        event is missed. An event named ``gap`` says events older than
        the server keeps were missed: re-read the jobs you care about.
        ``max_reconnects`` in a row (default: no limit) before the
        transport error is raised."""
        if job_id is None:
            return self._user_events(last_event_id, max_reconnects)
        return self._job_events(job_id)

    def _user_events(self, last_event_id: Optional[str], max_reconnects: Optional[int]) -> Iterator[JobEvent]:
        timeout = httpx.Timeout(self._http.timeout.connect, read=60.0)
        last = last_event_id
        failures = 0
        while True:
            try:
                with self._http.stream(
                    "GET", "/v1/events", headers=_core.stream_headers(last), timeout=timeout
                ) as res:
                    if res.status_code >= 400:
                        res.read()
                        _core.raise_for_problem(res)
                    parser = _core.SseParser()
                    for line in res.iter_lines():
                        for event in parser.feed(line):
                            failures = 0
                            if event.event == _core.STREAM_READY:
                                continue
                            if event.id is not None:
                                last = event.id
                            yield event
            except httpx.TransportError:
                if max_reconnects is not None and failures >= max_reconnects:
                    raise
            time.sleep(_core.backoff(failures, None))
            failures += 1

    def _job_events(self, job_id: str) -> Iterator[JobEvent]:
        parser = _core.SseParser()
        timeout = httpx.Timeout(self._http.timeout.connect, read=60.0)
        with self._http.stream(
            "GET", f"/v1/jobs/{job_id}/events", headers={"Accept": "text/event-stream"}, timeout=timeout
        ) as res:
            if res.status_code >= 400:
                res.read()
                _core.raise_for_problem(res)
            for line in res.iter_lines():
                for event in parser.feed(line):
                    yield event
                    if event.terminal:
                        return

    def wait(self, job_id: str, *, timeout: Optional[float] = None, poll_interval: float = 1.0) -> Job:
        """Waits for the job to end and returns it: follows its events, and
        polls when the stream cannot be had or breaks off. ``TimeoutError``
        after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            for event in self.events(job_id):
                if event.terminal:
                    return self.job(job_id)
                if deadline is not None and time.monotonic() > deadline:
                    break
        except (httpx.TransportError, ValueError):
            pass
        except ApiError as e:
            if e.status != 503:
                raise
        while True:
            job = self.job(job_id)
            if job.finished:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job.state} after {timeout} s")
            time.sleep(poll_interval)

    def download_output(self, job_id: str, n: int = 0, path: Optional[Any] = None) -> Download:
        """Output ``n`` (from 0) of a job, following the redirect to the
        object store; written to ``path`` too when given."""
        download = self._run(Calls.output(job_id, n))
        if path is not None:
            with open(path, "wb") as f:
                f.write(download.content)
        return download

    def upload_material(self, file: Any, *, name: Optional[str] = None) -> Material:
        """Uploads an image or video (a path, a binary file or bytes)."""
        content, default = _core.material_bytes(file)
        return self._run(Calls.upload_material(content, name or default))

    def materials(self, *, limit: Optional[int] = None) -> List[Material]:
        return self._run(Calls.materials(limit))

    list_materials = materials

    def material(self, material_id: str) -> Material:
        return self._run(Calls.material(material_id))

    get_material = material

    def material_content(self, material_id: str) -> bytes:
        return self._run(Calls.material_content(material_id))

    def delete_material(self, material_id: str) -> None:
        self._run(Calls.delete_material(material_id))

    def create_api_key(
        self,
        *,
        name: Optional[str] = None,
        scopes: Optional[Iterable[str]] = None,
        expires_at: Optional[Any] = None,
    ) -> IssuedKey:
        """Issues a key (``api_key`` is shown this once). Without ``scopes``
        it has full access; with them (``jobs:write``, ``jobs:read``,
        ``wallet:read``, ``materials:write``) only what they name, and a
        call outside them raises :class:`InsufficientScope`."""
        return self._run(Calls.create_api_key(name, scopes, expires_at))

    def api_keys(self) -> List[ApiKey]:
        return self._run(Calls.api_keys())

    def revoke_api_key(self, key_id: str) -> ApiKey:
        return self._run(Calls.revoke_api_key(key_id))

    def create_webhook(self, url: str, event_types: Iterable[str], *, enabled: bool = True) -> WebhookEndpoint:
        """Registers an account endpoint for ``event_types`` (``job.started``,
        ``job.succeeded``, ``job.failed``, ``job.cancelled``) of every job."""
        return self._run(Calls.create_webhook(url, event_types, enabled))

    def webhooks(self) -> List[WebhookEndpoint]:
        return self._run(Calls.webhooks())

    def webhook(self, endpoint_id: str) -> WebhookEndpoint:
        return self._run(Calls.webhook(endpoint_id))

    def update_webhook(
        self,
        endpoint_id: str,
        *,
        url: Optional[str] = None,
        event_types: Optional[Iterable[str]] = None,
        enabled: Optional[bool] = None,
    ) -> WebhookEndpoint:
        return self._run(Calls.update_webhook(endpoint_id, url, event_types, enabled))

    def delete_webhook(self, endpoint_id: str) -> None:
        self._run(Calls.delete_webhook(endpoint_id))

    def webhook_deliveries(self, endpoint_id: str) -> List[WebhookDelivery]:
        """The endpoint's last delivery attempts, newest first."""
        return self._run(Calls.webhook_deliveries(endpoint_id))


class AsyncClient:
    """The user API, asynchronously; the same methods as :class:`Client`."""

    def __init__(
        self,
        api_key: Optional[str] = None,
        base_url: Optional[str] = None,
        *,
        timeout: float = _core.DEFAULT_TIMEOUT,
        max_retries: int = _core.DEFAULT_MAX_RETRIES,
        transport: Optional[httpx.AsyncBaseTransport] = None,
    ) -> None:
        self.api_key = api_key if api_key is not None else os.environ.get("ADMEDIA_API_KEY")
        self.base_url = _base_url(base_url)
        self.max_retries = max_retries
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=_core.headers(self.api_key, USER_AGENT),
            timeout=timeout,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def _run(self, call: Call) -> Any:
        attempt = 0
        while True:
            try:
                res = await self._http.request(
                    call.method, call.path, params=call.params, json=call.json,
                    content=call.content, headers=call.headers,
                    follow_redirects=call.follow_redirects,
                )
            except httpx.TransportError:
                if not _core.should_retry(call, attempt, self.max_retries, None):
                    raise
                await asyncio.sleep(_core.backoff(attempt, None))
                attempt += 1
                continue
            if _core.should_retry(call, attempt, self.max_retries, res):
                await asyncio.sleep(_core.backoff(attempt, res))
                attempt += 1
                continue
            return call.parse(res)

    async def register(self, email: str, display_name: str) -> Registration:
        return await self._run(Calls.register(email, display_name))

    async def me(self) -> Me:
        return await self._run(Calls.me())

    async def webhook_secret(self) -> str:
        return await self._run(Calls.webhook_secret())

    async def wallet(self) -> Wallet:
        return await self._run(Calls.wallet())

    async def ledger(self, *, limit: Optional[int] = None, before: Optional[str] = None) -> LedgerPage:
        return await self._run(Calls.ledger(limit, before))

    async def submit(
        self,
        kind: Any,
        model: Optional[str] = None,
        prompt: Optional[str] = None,
        *,
        params: Optional[Dict[str, Any]] = None,
        webhook_url: Optional[str] = None,
        idempotency_key: Optional[str] = None,
    ) -> Job:
        job = _job(kind, model, prompt, params=params, webhook_url=webhook_url, idempotency_key=idempotency_key)
        return await self._run(Calls.submit(job))

    async def submit_batch(self, jobs: Iterable[JobLike]) -> List[BatchResult]:
        return await self._run(Calls.submit_batch(jobs))

    async def job(self, job_id: str) -> Job:
        return await self._run(Calls.job(job_id))

    get_job = job

    async def jobs(
        self, *, state: Optional[str] = None, limit: Optional[int] = None, before: Optional[str] = None
    ) -> JobPage:
        return await self._run(Calls.jobs(state, limit, before))

    list_jobs = jobs

    async def cancel(self, job_id: str) -> Job:
        return await self._run(Calls.cancel(job_id))

    def events(
        self,
        job_id: Optional[str] = None,
        *,
        last_event_id: Optional[str] = None,
        max_reconnects: Optional[int] = None,
    ) -> AsyncIterator[JobEvent]:
        """As :meth:`Client.events`."""
        if job_id is None:
            return self._user_events(last_event_id, max_reconnects)
        return self._job_events(job_id)

    async def _user_events(
        self, last_event_id: Optional[str], max_reconnects: Optional[int]
    ) -> AsyncIterator[JobEvent]:
        timeout = httpx.Timeout(self._http.timeout.connect, read=60.0)
        last = last_event_id
        failures = 0
        while True:
            try:
                async with self._http.stream(
                    "GET", "/v1/events", headers=_core.stream_headers(last), timeout=timeout
                ) as res:
                    if res.status_code >= 400:
                        await res.aread()
                        _core.raise_for_problem(res)
                    parser = _core.SseParser()
                    async for line in res.aiter_lines():
                        for event in parser.feed(line):
                            failures = 0
                            if event.event == _core.STREAM_READY:
                                continue
                            if event.id is not None:
                                last = event.id
                            yield event
            except httpx.TransportError:
                if max_reconnects is not None and failures >= max_reconnects:
                    raise
            await asyncio.sleep(_core.backoff(failures, None))
            failures += 1

    async def _job_events(self, job_id: str) -> AsyncIterator[JobEvent]:
        parser = _core.SseParser()
        timeout = httpx.Timeout(self._http.timeout.connect, read=60.0)
        async with self._http.stream(
            "GET", f"/v1/jobs/{job_id}/events", headers={"Accept": "text/event-stream"}, timeout=timeout
        ) as res:
            if res.status_code >= 400:
                await res.aread()
                _core.raise_for_problem(res)
            async for line in res.aiter_lines():
                for event in parser.feed(line):
                    yield event
                    if event.terminal:
                        return

    async def wait(self, job_id: str, *, timeout: Optional[float] = None, poll_interval: float = 1.0) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            async for event in self.events(job_id):
                if event.terminal:
                    return await self.job(job_id)
                if deadline is not None and time.monotonic() > deadline:
                    break
        except (httpx.TransportError, ValueError):
            pass
        except ApiError as e:
            if e.status != 503:
                raise
        while True:
            job = await self.job(job_id)
            if job.finished:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job.state} after {timeout} s")
            await asyncio.sleep(poll_interval)

    async def download_output(self, job_id: str, n: int = 0, path: Optional[Any] = None) -> Download:
        download = await self._run(Calls.output(job_id, n))
        if path is not None:
            with open(path, "wb") as f:
                f.write(download.content)
        return download

    async def upload_material(self, file: Any, *, name: Optional[str] = None) -> Material:
        content, default = _core.material_bytes(file)
        return await self._run(Calls.upload_material(content, name or default))

    async def materials(self, *, limit: Optional[int] = None) -> List[Material]:
        return await self._run(Calls.materials(limit))

    list_materials = materials

    async def material(self, material_id: str) -> Material:
        return await self._run(Calls.material(material_id))

    get_material = material

    async def material_content(self, material_id: str) -> bytes:
        return await self._run(Calls.material_content(material_id))

    async def delete_material(self, material_id: str) -> None:
        await self._run(Calls.delete_material(material_id))

    async def create_api_key(
        self,
        *,
        name: Optional[str] = None,
        scopes: Optional[Iterable[str]] = None,
        expires_at: Optional[Any] = None,
    ) -> IssuedKey:
        return await self._run(Calls.create_api_key(name, scopes, expires_at))

    async def api_keys(self) -> List[ApiKey]:
        return await self._run(Calls.api_keys())

    async def revoke_api_key(self, key_id: str) -> ApiKey:
        return await self._run(Calls.revoke_api_key(key_id))

    async def create_webhook(self, url: str, event_types: Iterable[str], *, enabled: bool = True) -> WebhookEndpoint:
        return await self._run(Calls.create_webhook(url, event_types, enabled))

    async def webhooks(self) -> List[WebhookEndpoint]:
        return await self._run(Calls.webhooks())

    async def webhook(self, endpoint_id: str) -> WebhookEndpoint:
        return await self._run(Calls.webhook(endpoint_id))

    async def update_webhook(
        self,
        endpoint_id: str,
        *,
        url: Optional[str] = None,
        event_types: Optional[Iterable[str]] = None,
        enabled: Optional[bool] = None,
    ) -> WebhookEndpoint:
        return await self._run(Calls.update_webhook(endpoint_id, url, event_types, enabled))

    async def delete_webhook(self, endpoint_id: str) -> None:
        await self._run(Calls.delete_webhook(endpoint_id))

    async def webhook_deliveries(self, endpoint_id: str) -> List[WebhookDelivery]:
        return await self._run(Calls.webhook_deliveries(endpoint_id))
