"""What the sync and async clients share: each API call as a description
(method, path, body, whether a retry is safe, how to read the answer), the
retry policy, and the server-sent-events parser."""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

import httpx

from . import models
from .errors import ApiError, error_from_problem
from .models import JobRequest

DEFAULT_BASE_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_RETRIES = 3
#: The longest wait between two tries, whatever ``Retry-After`` says.
MAX_BACKOFF = 30.0


@dataclass
class Call:
    method: str
    path: str
    parse: Callable[[httpx.Response], Any]
    params: Optional[Dict[str, Any]] = None
    json: Any = None
    content: Optional[bytes] = None
    headers: Dict[str, str] = field(default_factory=dict)
    #: Sending it twice changes nothing more than sending it once (a read,
    #: or a submission with its idempotency key), so a transport error or
    #: a 503 is tried again.
    retry: bool = False
    follow_redirects: bool = False


def new_idempotency_key() -> str:
    return f"py-{uuid.uuid4()}"


def raise_for_problem(res: httpx.Response) -> None:
    if res.status_code < 400:
        return
    retry_after = _retry_after(res)
    try:
        problem = res.json()
        if not isinstance(problem, dict):
            raise ValueError("not an object")
    except ValueError:
        problem = {"type": f"http-{res.status_code}", "status": res.status_code, "detail": res.text[:500]}
    raise error_from_problem(problem, res.status_code, retry_after)


def _retry_after(res: httpx.Response) -> Optional[int]:
    value = res.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0, int(value))
    except ValueError:
        return None


def backoff(attempt: int, res: Optional[httpx.Response]) -> float:
    """Seconds before try ``attempt + 1``: the server's ``Retry-After`` when
    it sent one, otherwise exponential with jitter."""
    if res is not None:
        after = _retry_after(res)
        if after is not None:
            return float(min(after, MAX_BACKOFF))
    return min(MAX_BACKOFF, 0.25 * (2**attempt)) * (0.5 + random.random() / 2)


def should_retry(call: Call, attempt: int, max_retries: int, res: Optional[httpx.Response]) -> bool:
    """A transport error (``res`` is None) or a 503, on a call safe to repeat."""
    if not call.retry or attempt >= max_retries:
        return False
    return res is None or res.status_code == 503


def _json(parse: Callable[[Any], Any]) -> Callable[[httpx.Response], Any]:
    def read(res: httpx.Response) -> Any:
        raise_for_problem(res)
        return parse(res.json())

    return read


def _nothing(res: httpx.Response) -> None:
    raise_for_problem(res)


def _download(res: httpx.Response) -> models.Download:
    raise_for_problem(res)
    return models.Download(
        content=res.content,
        content_type=res.headers.get("content-type"),
        license=res.headers.get("x-content-license"),
    )


def _bytes(res: httpx.Response) -> bytes:
    raise_for_problem(res)
    return res.content


def _query(**values: Any) -> Optional[Dict[str, Any]]:
    q = {k: v for k, v in values.items() if v is not None}
    return q or None


JobLike = Union[JobRequest, Mapping[str, Any]]


def job_request(job: JobLike) -> JobRequest:
    if isinstance(job, JobRequest):
        return job
    known = {"kind", "model", "prompt", "params", "webhook_url", "priority", "idempotency_key"}
    unknown = set(job) - known
    if unknown:
        raise TypeError(f"unknown job fields: {sorted(unknown)}")
    return JobRequest(**dict(job))


class Calls:
    """Every call of the user API, as descriptions."""

    @staticmethod
    def register(email: str, display_name: str) -> Call:
        return Call(
            "POST", "/v1/users", _json(models.Registration.from_dict),
            json={"email": email, "display_name": display_name},
        )

    @staticmethod
    def me() -> Call:
        return Call("GET", "/v1/me", _json(models.Me.from_dict), retry=True)

    @staticmethod
    def webhook_secret() -> Call:
        return Call("GET", "/v1/me/webhook-secret", _json(lambda d: d["secret"]), retry=True)

    @staticmethod
    def wallet() -> Call:
        return Call("GET", "/v1/wallet", _json(models.Wallet.from_dict), retry=True)

    @staticmethod
    def ledger(limit: Optional[int], before: Optional[str]) -> Call:
        return Call(
            "GET", "/v1/wallet/ledger", _json(models.LedgerPage.from_dict),
            params=_query(limit=limit, before=before), retry=True,
        )

    @staticmethod
    def submit(job: JobRequest) -> Call:
        # A key of its own for every submission, so retrying it after a lost
        # answer cannot hold the job's cost twice.
        key = job.idempotency_key or new_idempotency_key()
        return Call(
            "POST", "/v1/jobs", _json(models.Job.from_dict),
            json=job.body(), headers={"Idempotency-Key": key}, retry=True,
        )

    @staticmethod
    def submit_batch(jobs: Iterable[JobLike]) -> Call:
        requests = [job_request(j) for j in jobs]
        keys = [r.idempotency_key or new_idempotency_key() for r in requests]
        items = [{"idempotency_key": k, "job": r.body()} for k, r in zip(keys, requests)]

        def read(res: httpx.Response) -> List[models.BatchResult]:
            raise_for_problem(res)
            results = res.json()["results"]
            return [models.BatchResult.from_dict(r, keys[int(r["index"])]) for r in results]

        return Call("POST", "/v1/jobs/batch", read, json={"items": items}, retry=True)

    @staticmethod
    def job(job_id: str) -> Call:
        return Call("GET", f"/v1/jobs/{job_id}", _json(models.Job.from_dict), retry=True)

    @staticmethod
    def jobs(state: Optional[str], limit: Optional[int], before: Optional[str]) -> Call:
        return Call(
            "GET", "/v1/jobs", _json(models.JobPage.from_dict),
            params=_query(state=state, limit=limit, before=before), retry=True,
        )

    @staticmethod
    def cancel(job_id: str) -> Call:
        # Not retried: a cancel that did land answers `job-finished` the
        # second time.
        return Call("POST", f"/v1/jobs/{job_id}/cancel", _json(models.Job.from_dict))

    @staticmethod
    def output(job_id: str, n: int) -> Call:
        # Follows the redirect to the object store; httpx drops the API key
        # when the redirect leaves the server's origin.
        return Call("GET", f"/v1/jobs/{job_id}/outputs/{n}", _download, retry=True, follow_redirects=True)

    @staticmethod
    def upload_material(content: bytes, name: Optional[str]) -> Call:
        return Call(
            "POST", "/v1/materials", _json(models.Material.from_dict),
            params=_query(name=name), content=content,
            headers={"Content-Type": "application/octet-stream"},
        )

    @staticmethod
    def materials(limit: Optional[int]) -> Call:
        return Call(
            "GET", "/v1/materials",
            _json(lambda d: [models.Material.from_dict(m) for m in d.get("materials", [])]),
            params=_query(limit=limit), retry=True,
        )

    @staticmethod
    def material(material_id: str) -> Call:
        return Call("GET", f"/v1/materials/{material_id}", _json(models.Material.from_dict), retry=True)

    @staticmethod
    def material_content(material_id: str) -> Call:
        return Call("GET", f"/v1/materials/{material_id}/content", _bytes, retry=True, follow_redirects=True)

    @staticmethod
    def delete_material(material_id: str) -> Call:
        return Call("DELETE", f"/v1/materials/{material_id}", _nothing)

    @staticmethod
    def create_api_key(
        name: Optional[str], scopes: Optional[Iterable[str]], expires_at: Optional[Any]
    ) -> Call:
        body: Dict[str, Any] = {}
        if name is not None:
            body["name"] = name
        if scopes is not None:
            body["scopes"] = list(scopes)
        if expires_at is not None:
            body["expires_at"] = expires_at.isoformat() if hasattr(expires_at, "isoformat") else str(expires_at)
        # Not retried: a key issued twice is a key too many.
        return Call("POST", "/v1/me/api-keys", _json(models.IssuedKey.from_dict), json=body)

    @staticmethod
    def api_keys() -> Call:
        return Call(
            "GET", "/v1/me/api-keys",
            _json(lambda d: [models.ApiKey.from_dict(k) for k in d.get("keys", [])]), retry=True,
        )

    @staticmethod
    def revoke_api_key(key_id: str) -> Call:
        # Revoking again changes nothing, so a retry is safe.
        return Call("DELETE", f"/v1/me/api-keys/{key_id}", _json(models.ApiKey.from_dict), retry=True)

    @staticmethod
    def create_webhook(url: str, event_types: Iterable[str], enabled: bool) -> Call:
        return Call(
            "POST", "/v1/me/webhooks", _json(models.WebhookEndpoint.from_dict),
            json={"url": url, "event_types": list(event_types), "enabled": enabled},
        )

    @staticmethod
    def webhooks() -> Call:
        return Call(
            "GET", "/v1/me/webhooks",
            _json(lambda d: [models.WebhookEndpoint.from_dict(e) for e in d.get("endpoints", [])]),
            retry=True,
        )

    @staticmethod
    def webhook(endpoint_id: str) -> Call:
        return Call("GET", f"/v1/me/webhooks/{endpoint_id}", _json(models.WebhookEndpoint.from_dict), retry=True)

    @staticmethod
    def update_webhook(
        endpoint_id: str,
        url: Optional[str],
        event_types: Optional[Iterable[str]],
        enabled: Optional[bool],
    ) -> Call:
        body: Dict[str, Any] = {}
        if url is not None:
            body["url"] = url
        if event_types is not None:
            body["event_types"] = list(event_types)
        if enabled is not None:
            body["enabled"] = enabled
        # Setting the same fields again changes nothing more.
        return Call(
            "PATCH", f"/v1/me/webhooks/{endpoint_id}", _json(models.WebhookEndpoint.from_dict),
            json=body, retry=True,
        )

    @staticmethod
    def delete_webhook(endpoint_id: str) -> Call:
        return Call("DELETE", f"/v1/me/webhooks/{endpoint_id}", _nothing)

    @staticmethod
    def webhook_deliveries(endpoint_id: str) -> Call:
        return Call(
            "GET", f"/v1/me/webhooks/{endpoint_id}/deliveries",
            _json(lambda d: [models.WebhookDelivery.from_dict(a) for a in d.get("deliveries", [])]),
            retry=True,
        )


#: The per-user stream's own events, which are not job events.
STREAM_READY = "ready"
STREAM_GAP = "gap"


def stream_headers(last_event_id: Optional[str]) -> Dict[str, str]:
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    return headers


class SseParser:
    """Server-sent events, fed line by line; yields ``JobEvent``s."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._id: Optional[str] = None
        self._event = ""
        self._data: List[str] = []

    def feed(self, line: str) -> Iterator[models.JobEvent]:
        line = line.rstrip("\r\n")
        if not line:
            if self._data:
                data = json.loads("\n".join(self._data))
                yield models.JobEvent.from_frame(self._id, self._event, data)
            self._reset()
            return
        if line.startswith(":"):
            return
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            self._id = value
        elif name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)


def headers(api_key: Optional[str], user_agent: str) -> Dict[str, str]:
    h = {"User-Agent": user_agent, "Accept": "application/json"}
    if api_key:
        h["Authorization"] = f"Bearer {api_key}"
    return h


def material_bytes(file: Any) -> Tuple[bytes, Optional[str]]:
    """Bytes and a default name from a path, a binary file or bytes."""
    import os

    if isinstance(file, (bytes, bytearray, memoryview)):
        return bytes(file), None
    if isinstance(file, (str, os.PathLike)):
        with open(file, "rb") as f:
            return f.read(), os.path.basename(os.fspath(file))
    data = file.read()
    name = getattr(file, "name", None)
    return data, os.path.basename(name) if isinstance(name, str) else None


__all__ = ["ApiError"]
