"""Client for the AdMedia orchestrator's HTTP API.

    from admedia import Client
    client = Client(api_key="...", base_url="http://127.0.0.1:8080")
    job = client.submit("image", "sdxl", "a red fox in the snow")
    job = client.wait(job.id)
    client.download_output(job.id, 0, "fox.png")
"""

from .client import AsyncClient, Client
from .errors import (
    AccountSuspended,
    AdmediaError,
    ApiError,
    BatchTooLarge,
    Conflict,
    ContentRejected,
    Forbidden,
    Gone,
    IdempotencyKeyReused,
    InsufficientCredits,
    InsufficientScope,
    InvalidParams,
    InvalidRequest,
    JobFinished,
    KeyExpired,
    NotFound,
    PayloadTooLarge,
    QueueLimit,
    RateLimited,
    ServerError,
    Unauthorized,
    Unavailable,
    WebhookVerificationError,
    error_from_problem,
)
from .models import (
    ApiKey,
    BatchResult,
    Download,
    IssuedKey,
    Job,
    JobError,
    JobEvent,
    JobPage,
    JobRequest,
    JobResult,
    LedgerEntry,
    LedgerPage,
    Material,
    Me,
    Output,
    Registration,
    Storage,
    User,
    Wallet,
    WebhookDelivery,
    WebhookEndpoint,
)
from .webhooks import verify_webhook

__version__ = "0.1.0"

__all__ = [
    "AccountSuspended", "AdmediaError", "ApiError", "AsyncClient", "BatchResult", "BatchTooLarge",
    "Client", "Conflict", "ContentRejected", "Download", "Forbidden", "Gone", "IdempotencyKeyReused",
    "InsufficientCredits", "InvalidParams", "InvalidRequest", "Job", "JobError", "JobEvent",
    "JobFinished", "JobPage", "JobRequest", "JobResult", "LedgerEntry", "LedgerPage", "Material",
    "Me", "NotFound", "Output", "PayloadTooLarge", "QueueLimit", "RateLimited", "Registration",
    "ServerError", "Storage", "Unauthorized", "Unavailable", "User", "Wallet",
    "WebhookVerificationError", "error_from_problem", "verify_webhook",
    "ApiKey", "InsufficientScope", "IssuedKey", "KeyExpired", "WebhookDelivery", "WebhookEndpoint",
]
