"""The API's JSON shapes as dataclasses.

Each ``from_dict`` reads the fields it knows and ignores the others, so a
server that adds a field does not break an older client.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, List, Mapping, Optional

from .errors import ApiError, error_from_problem

TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})

_TIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:?\d{2})?$"
)


def parse_time(value: Optional[str]) -> Optional[datetime]:
    """An RFC 3339 timestamp (nanoseconds allowed) as an aware datetime."""
    if value is None:
        return None
    m = _TIME.match(value)
    if not m:
        raise ValueError(f"not an RFC 3339 timestamp: {value!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    micros = int((m.group(7) or "0")[:6].ljust(6, "0"))
    zone = m.group(8)
    tz = timezone.utc
    if zone and zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        tz = timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))
    return datetime(year, month, day, hour, minute, second, micros, tzinfo=tz)


def _known(cls: type, data: Mapping[str, Any]) -> Dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass
class User:
    id: str
    email: str
    display_name: str
    tier: str
    status: str
    created_at: Optional[datetime] = None
    membership_expires_at: Optional[datetime] = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "User":
        d = _known(cls, data)
        d["created_at"] = parse_time(d.get("created_at"))
        d["membership_expires_at"] = parse_time(d.get("membership_expires_at"))
        return cls(**d)


@dataclass
class Wallet:
    balance: int
    held: int
    available: int

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Wallet":
        return cls(**_known(cls, data))


@dataclass
class Registration:
    """A new account: ``api_key`` is shown this once."""

    user: User
    api_key: str
    wallet: Wallet

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Registration":
        return cls(
            user=User.from_dict(data["user"]),
            api_key=data["api_key"],
            wallet=Wallet.from_dict(data["wallet"]),
        )


@dataclass
class Storage:
    used_bytes: int
    quota_bytes: int
    materials: int = 0
    outputs: int = 0
    retention_days: int = 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Storage":
        return cls(**_known(cls, data))


@dataclass
class Me:
    user: User
    wallet: Wallet
    membership: Dict[str, Any] = field(default_factory=dict)
    next_gift: Optional[Dict[str, Any]] = None
    storage: Optional[Storage] = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Me":
        storage = data.get("storage")
        return cls(
            user=User.from_dict(data["user"]),
            wallet=Wallet.from_dict(data["wallet"]),
            membership=dict(data.get("membership") or {}),
            next_gift=data.get("next_gift"),
            storage=Storage.from_dict(storage) if storage else None,
        )


@dataclass
class LedgerEntry:
    id: str
    kind: str
    amount: int
    balance: int
    held: int
    source: Optional[str] = None
    job_id: Optional[str] = None
    note: Optional[str] = None
    created_at: Optional[datetime] = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LedgerEntry":
        d = _known(cls, data)
        d["created_at"] = parse_time(d.get("created_at"))
        return cls(**d)


@dataclass
class LedgerPage:
    entries: List[LedgerEntry]
    next: Optional[str] = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LedgerPage":
        return cls([LedgerEntry.from_dict(e) for e in data.get("entries", [])], data.get("next"))


@dataclass
class Output:
    url: str
    content_type: str

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Output":
        return cls(**_known(cls, data))


@dataclass
class JobResult:
    outputs: List[Output]
    license: str

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "JobResult":
        return cls([Output.from_dict(o) for o in data.get("outputs", [])], data.get("license", ""))


@dataclass
class JobError:
    class_: str
    message: str
    code: Optional[str] = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "JobError":
        return cls(data.get("class", ""), data.get("message", ""), data.get("code"))


@dataclass
class Job:
    id: str
    kind: str
    model: str
    prompt: str
    state: str
    cost: int
    params: Dict[str, Any] = field(default_factory=dict)
    tier: str = ""
    charge: str = ""
    attempts: int = 0
    max_attempts: int = 0
    queue_position: Optional[int] = None
    created_at: Optional[datetime] = None
    started_at: Optional[datetime] = None
    finished_at: Optional[datetime] = None
    retry_at: Optional[datetime] = None
    error: Optional[JobError] = None
    result: Optional[JobResult] = None
    withheld_outputs: int = 0
    webhook_url: Optional[str] = None
    price_version: Optional[int] = None
    priority: str = "normal"

    @property
    def finished(self) -> bool:
        """Succeeded, failed or cancelled: nothing more will happen."""
        return self.state in TERMINAL_STATES

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Job":
        d = _known(cls, data)
        for name in ("created_at", "started_at", "finished_at", "retry_at"):
            d[name] = parse_time(d.get(name))
        if d.get("error"):
            d["error"] = JobError.from_dict(d["error"])
        if d.get("result"):
            d["result"] = JobResult.from_dict(d["result"])
        d["params"] = dict(d.get("params") or {})
        return cls(**d)


@dataclass
class JobPage:
    jobs: List[Job]
    next: Optional[str] = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "JobPage":
        return cls([Job.from_dict(j) for j in data.get("jobs", [])], data.get("next"))


@dataclass
class JobRequest:
    """One job to submit (``params`` as in the API: width, height, count,
    duration_s, seed, init_image, reference_images)."""

    kind: str
    model: str
    prompt: str
    params: Optional[Dict[str, Any]] = None
    webhook_url: Optional[str] = None
    #: ``low``, ``normal`` or ``high``: orders it among your own waiting jobs.
    priority: Optional[str] = None
    #: This job's idempotency key; the client makes one when it is unset.
    idempotency_key: Optional[str] = None

    def body(self) -> Dict[str, Any]:
        body: Dict[str, Any] = {"kind": self.kind, "model": self.model, "prompt": self.prompt}
        if self.params:
            body["params"] = dict(self.params)
        if self.webhook_url is not None:
            body["webhook_url"] = self.webhook_url
        if self.priority is not None:
            body["priority"] = self.priority
        return body


@dataclass
class BatchResult:
    """What became of one item of a batch: ``job`` when accepted (``status``
    202), otherwise ``error``, the exception a single submission would
    have raised."""

    index: int
    status: int
    job: Optional[Job] = None
    error: Optional[ApiError] = None
    replayed: bool = False
    idempotency_key: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.job is not None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], idempotency_key: Optional[str] = None) -> "BatchResult":
        job = data.get("job")
        problem = data.get("problem")
        return cls(
            index=int(data["index"]),
            status=int(data["status"]),
            job=Job.from_dict(job) if job else None,
            error=error_from_problem(problem, int(data["status"])) if problem else None,
            replayed=bool(data.get("replayed", False)),
            idempotency_key=idempotency_key,
        )


@dataclass
class JobEvent:
    """One server-sent event of a job: ``event`` is ``state`` (with
    ``state``, ``charge``, ``error``) or ``progress`` (with ``percent``)."""

    id: Optional[str]
    event: str
    job_id: str
    attempt: int = 0
    at: Optional[datetime] = None
    state: Optional[str] = None
    charge: Optional[str] = None
    error: Optional[JobError] = None
    percent: Optional[int] = None

    @property
    def terminal(self) -> bool:
        return self.event == "state" and self.state in TERMINAL_STATES

    @classmethod
    def from_frame(cls, id: Optional[str], event: str, data: Mapping[str, Any]) -> "JobEvent":
        error = data.get("error")
        return cls(
            id=id,
            event=event or str(data.get("event", "")),
            job_id=str(data.get("job_id", "")),
            attempt=int(data.get("attempt", 0)),
            at=parse_time(data.get("at")),
            state=data.get("state"),
            charge=data.get("charge"),
            error=JobError.from_dict(error) if error else None,
            percent=data.get("percent"),
        )


@dataclass
class Material:
    id: str
    name: str
    content_type: str
    media: str
    size_bytes: int
    content_url: str = ""
    created_at: Optional[datetime] = None
    expires_at: Optional[datetime] = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Material":
        d = _known(cls, data)
        d["created_at"] = parse_time(d.get("created_at"))
        d["expires_at"] = parse_time(d.get("expires_at"))
        return cls(**d)


@dataclass
class Download:
    """An output's bytes, their type and the licence they come under."""

    content: bytes
    content_type: Optional[str] = None
    license: Optional[str] = None


@dataclass
class ApiKey:
    """A key as listed: never the key itself. ``scopes`` is ``None`` for
    full access (keys issued without scopes, and every key issued before
    scopes existed)."""

    id: str
    created_at: Optional[datetime]
    revoked_at: Optional[datetime] = None
    active: bool = True
    current: bool = False
    name: Optional[str] = None
    expires_at: Optional[datetime] = None
    scopes: Optional[List[str]] = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ApiKey":
        scopes = d.get("scopes")
        return cls(
            id=str(d["id"]),
            created_at=parse_time(d.get("created_at")),
            revoked_at=parse_time(d.get("revoked_at")),
            active=bool(d.get("active", True)),
            current=bool(d.get("current", False)),
            name=d.get("name"),
            expires_at=parse_time(d.get("expires_at")),
            scopes=None if scopes is None else [str(x) for x in scopes],
        )


@dataclass
class IssuedKey:
    """A new key: ``api_key`` is shown this once."""

    id: str
    api_key: str
    created_at: Optional[datetime]
    name: Optional[str] = None
    expires_at: Optional[datetime] = None
    scopes: Optional[List[str]] = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "IssuedKey":
        scopes = d.get("scopes")
        return cls(
            id=str(d["id"]),
            api_key=str(d["api_key"]),
            created_at=parse_time(d.get("created_at")),
            name=d.get("name"),
            expires_at=parse_time(d.get("expires_at")),
            scopes=None if scopes is None else [str(x) for x in scopes],
        )


@dataclass
class WebhookEndpoint:
    """An account webhook endpoint: every job event of the account of one
    of ``event_types`` is delivered to ``url`` while ``enabled``."""

    id: str
    url: str
    event_types: List[str]
    enabled: bool
    created_at: Optional[datetime] = None
    updated_at: Optional[datetime] = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "WebhookEndpoint":
        return cls(
            id=str(d["id"]),
            url=str(d["url"]),
            event_types=[str(t) for t in d.get("event_types", [])],
            enabled=bool(d.get("enabled", False)),
            created_at=parse_time(d.get("created_at")),
            updated_at=parse_time(d.get("updated_at")),
        )


@dataclass
class WebhookDelivery:
    """One logged delivery attempt to an endpoint: ``outcome`` is
    ``delivered``, ``failed`` (tried again later) or ``given_up``."""

    webhook_id: str
    job_id: str
    event_type: str
    attempted_at: Optional[datetime]
    outcome: str
    status_code: Optional[int] = None
    error: Optional[str] = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "WebhookDelivery":
        status = d.get("status_code")
        return cls(
            webhook_id=str(d.get("webhook_id", "")),
            job_id=str(d.get("job_id", "")),
            event_type=str(d.get("event_type", "")),
            attempted_at=parse_time(d.get("attempted_at")),
            outcome=str(d.get("outcome", "")),
            status_code=None if status is None else int(status),
            error=d.get("error"),
        )
