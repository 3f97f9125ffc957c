"""A typed client of the dfguard gateway: `Client` (blocking) and `AsyncClient` (asyncio).

Depends on httpx and pydantic only. The response models (`dfguard_client.models`) and the error classes
(`dfguard_client.errors`) are generated from the service's own definitions, so they cannot drift apart.

    from dfguard_client import Client

    with Client("http://127.0.0.1:8080", api_key="...") as dfg:
        result = dfg.score("clip.mp4")
        print(result.decision, result.score)
"""

from dfguard_client._client import AsyncClient, Client
from dfguard_client._core import VERSION, Source
from dfguard_client.errors import *  # noqa: F403 - the exception tree is part of the top-level API
from dfguard_client.errors import __all__ as _errors
from dfguard_client.models import (
    DecisionRecord,
    ErrorDetail,
    JobAccepted,
    JobStatus,
    ScoreResult,
)
from dfguard_client.webhooks import (
    InvalidSignature,
    MissingHeaders,
    StaleTimestamp,
    WebhookVerificationError,
    verify_callback,
)

__version__ = VERSION

__all__ = [
    "AsyncClient",
    "Client",
    "DecisionRecord",
    "ErrorDetail",
    "InvalidSignature",
    "JobAccepted",
    "JobStatus",
    "MissingHeaders",
    "ScoreResult",
    "Source",
    "StaleTimestamp",
    "WebhookVerificationError",
    "__version__",
    "verify_callback",
    *_errors,
]
