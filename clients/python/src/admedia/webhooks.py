"""Verifying the server's job webhooks (Standard Webhooks).

Each delivery carries ``webhook-id`` (the same on every retry of one event,
so a receiver can drop repeats), ``webhook-timestamp`` (Unix seconds) and
``webhook-signature``: ``v1,`` + base64(HMAC-SHA256(key, "id.timestamp.body")),
where the key is the base64 part of the user's secret (``whsec_...``,
``GET /v1/me/webhook-secret``). Several space-separated signatures may be
sent; one matching is enough.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from typing import Any, Mapping, Optional, Union

from .errors import WebhookVerificationError

#: How far a delivery's timestamp may be from now, either way (seconds).
DEFAULT_TOLERANCE = 300


def _header(headers: Any, name: str) -> Optional[str]:
    # httpx, requests, Starlette and http.server headers are case-insensitive
    # already; a plain dict may not be.
    value = headers.get(name) if hasattr(headers, "get") else None
    if value is None and isinstance(headers, Mapping):
        for key, v in headers.items():
            if str(key).lower() == name:
                return str(v)
    return None if value is None else str(value)


def sign(secret: str, msg_id: str, timestamp: int, body: Union[bytes, str]) -> str:
    """The ``v1,...`` signature the server sends for this delivery."""
    key = _key(secret)
    payload = body.encode() if isinstance(body, str) else body
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + payload, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def _key(secret: str) -> bytes:
    encoded = secret[len("whsec_") :] if secret.startswith("whsec_") else secret
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as e:
        raise WebhookVerificationError(f"the secret is not whsec_ + base64: {e}") from e


def verify_webhook(
    secret: str,
    headers: Any,
    body: Union[bytes, str],
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    now: Optional[float] = None,
) -> Any:
    """Checks a delivery's signature and timestamp and returns its JSON body.

    ``headers`` is any mapping of the request's headers, ``body`` the raw
    body exactly as received (verify before parsing). Raises
    :class:`WebhookVerificationError` when a header is missing, the
    timestamp is more than ``tolerance`` seconds away, or no signature
    matches.
    """
    msg_id = _header(headers, "webhook-id")
    timestamp = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    if not msg_id or not timestamp or not signatures:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        sent_at = int(timestamp)
    except ValueError as e:
        raise WebhookVerificationError(f"webhook-timestamp is not a number: {timestamp!r}") from e
    current = time.time() if now is None else now
    if abs(current - sent_at) > tolerance:
        raise WebhookVerificationError("webhook-timestamp is outside the tolerance")
    expected = sign(secret, msg_id, sent_at, body).encode()
    for candidate in signatures.split():
        if hmac.compare_digest(candidate.encode(), expected):
            raw = body.decode() if isinstance(body, bytes) else body
            try:
                return json.loads(raw)
            except ValueError as e:
                raise WebhookVerificationError(f"the body is not JSON: {e}") from e
    raise WebhookVerificationError("no signature matches")
