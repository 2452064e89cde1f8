"""Problem documents (``application/problem+json``) as exceptions.

The server answers every error with a problem document whose ``type`` is
stable; each type a client is likely to handle has its own exception class,
and every one of them is an :class:`ApiError` carrying ``type``, ``status``,
``detail`` and the whole document in ``problem``.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Type


class AdmediaError(Exception):
    """Base of every error this package raises."""


class ApiError(AdmediaError):
    """The server refused the request; ``type`` says why."""

    def __init__(
        self,
        type: str,
        status: int,
        detail: str = "",
        title: str = "",
        problem: Optional[Mapping[str, Any]] = None,
    ) -> None:
        super().__init__(f"{status} {type}: {detail}" if detail else f"{status} {type}")
        self.type = type
        self.status = status
        self.detail = detail
        self.title = title
        self.problem: Dict[str, Any] = dict(problem or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}(type={self.type!r}, status={self.status}, detail={self.detail!r})"


class InvalidRequest(ApiError):
    """``400 invalid-request``: malformed JSON, an unknown field, a wrong type."""


class Unauthorized(ApiError):
    """``401 unauthorized``: missing or wrong API key."""


class KeyExpired(Unauthorized):
    """``401 key-expired``: the API key passed its ``expires_at``; issue a new one."""


class Forbidden(ApiError):
    """``403 forbidden``: the account may not do this."""


class InsufficientScope(Forbidden):
    """``403 insufficient-scope``: the API key's scopes do not allow this
    request; ``required_scope`` names the scope it needs (``jobs:write``,
    ``jobs:read``, ``wallet:read``, ``materials:write``), or ``full-access``
    for what only a key without scopes may do (keys, webhooks, the account)."""

    @property
    def required_scope(self) -> Optional[str]:
        return self.problem.get("required_scope")


class AccountSuspended(Forbidden):
    """``403 account-suspended``."""


class NotFound(ApiError):
    """``404 not-found``: no such resource, or not the caller's."""


class Gone(ApiError):
    """``410 gone``: it existed but is no longer stored."""


class Conflict(ApiError):
    """``409``: conflicts with the current state."""


class JobFinished(Conflict):
    """``409 job-finished``: the job already ended."""


class PayloadTooLarge(ApiError):
    """``413``: the body, file or storage quota is too large."""


class InvalidParams(ApiError):
    """``422 invalid-params`` (and ``invalid-text``, ``unknown-model``): well-formed but outside the rules."""


class IdempotencyKeyReused(ApiError):
    """``422 idempotency-key-reused``: the key was sent before with another request."""


class BatchTooLarge(ApiError):
    """``422 batch-too-large``: more jobs than one batch may hold (``limit``)."""

    @property
    def limit(self) -> Optional[int]:
        return self.problem.get("limit")


class ContentRejected(ApiError):
    """``422 content-rejected``: the prompt breaks the content rules (``category``)."""

    @property
    def category(self) -> Optional[str]:
        return self.problem.get("category")


class InsufficientCredits(ApiError):
    """``402 insufficient-credits``: the wallet cannot hold the job's cost."""

    @property
    def required(self) -> Optional[int]:
        return self.problem.get("required")

    @property
    def available(self) -> Optional[int]:
        return self.problem.get("available")


class RateLimited(ApiError):
    """``429 rate-limited``: too many submissions; retry after ``retry_after`` seconds."""

    def __init__(self, *args: Any, retry_after: Optional[int] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if retry_after is None:
            retry_after = self.problem.get("retry_after")
        self.retry_after: Optional[int] = retry_after


class QueueLimit(ApiError):
    """``429 queue-limit``: too many waiting jobs for the tier (``limit``)."""

    @property
    def limit(self) -> Optional[int]:
        return self.problem.get("limit")


class Unavailable(ApiError):
    """``503``: the store, scheduler or content checks are down for now."""

    def __init__(self, *args: Any, retry_after: Optional[int] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if retry_after is None:
            retry_after = self.problem.get("retry_after")
        self.retry_after: Optional[int] = retry_after


class ServerError(ApiError):
    """``500 internal``: a fault of the server's."""


class WebhookVerificationError(AdmediaError):
    """A webhook whose signature or timestamp does not verify."""


_BY_TYPE: Dict[str, Type[ApiError]] = {
    "invalid-request": InvalidRequest,
    "unauthorized": Unauthorized,
    "key-expired": KeyExpired,
    "insufficient-scope": InsufficientScope,
    "forbidden": Forbidden,
    "account-suspended": AccountSuspended,
    "not-found": NotFound,
    "gone": Gone,
    "job-finished": JobFinished,
    "email-taken": Conflict,
    "last-api-key": Conflict,
    "payment-id-reused": Conflict,
    "payload-too-large": PayloadTooLarge,
    "file-too-large": PayloadTooLarge,
    "storage-quota-exceeded": PayloadTooLarge,
    "invalid-params": InvalidParams,
    "invalid-text": InvalidParams,
    "unknown-model": InvalidParams,
    "idempotency-key-reused": IdempotencyKeyReused,
    "batch-too-large": BatchTooLarge,
    "content-rejected": ContentRejected,
    "insufficient-credits": InsufficientCredits,
    "rate-limited": RateLimited,
    "queue-limit": QueueLimit,
    "unavailable": Unavailable,
    "moderation-unavailable": Unavailable,
    "internal": ServerError,
}

_BY_STATUS: Dict[int, Type[ApiError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    402: InsufficientCredits,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    413: PayloadTooLarge,
    422: InvalidParams,
    429: RateLimited,
    503: Unavailable,
}


def error_from_problem(
    problem: Mapping[str, Any], status: Optional[int] = None, retry_after: Optional[int] = None
) -> ApiError:
    """The exception for a problem document (``status`` when the document lacks one)."""
    status = int(problem.get("status") or status or 0)
    kind = str(problem.get("type") or "")
    cls = _BY_TYPE.get(kind) or _BY_STATUS.get(status) or (ServerError if status >= 500 else ApiError)
    kwargs: Dict[str, Any] = {}
    if cls in (RateLimited, Unavailable):
        kwargs["retry_after"] = problem.get("retry_after", retry_after)
    return cls(
        kind or f"http-{status}",
        status,
        str(problem.get("detail") or ""),
        str(problem.get("title") or ""),
        problem,
        **kwargs,
    )
