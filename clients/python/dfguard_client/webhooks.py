"""Verify the callbacks dfguard POSTs when a job finishes.

The gateway signs `"{timestamp}.{body}"` with HMAC-SHA256 under every active secret of the tenant (two
during a rotation) and sends `X-Dfguard-Timestamp: <unix seconds>` and
`X-Dfguard-Signature: sha256=<hex>[,sha256=<hex>]`. A callback is genuine when one signature matches one of
the receiver's secrets (compared in constant time) and its timestamp is within `tolerance_seconds` of the
receiver's clock. Inside that window a replay of a genuine callback still verifies: deduplicate on
`X-Dfguard-Job-Id` (a job's callback is delivered at least once, retried with the same job id).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence

__all__ = [
    "InvalidSignature",
    "MissingHeaders",
    "StaleTimestamp",
    "WebhookVerificationError",
    "sign",
    "verify_callback",
]

SIGNATURE_HEADER = "x-dfguard-signature"
TIMESTAMP_HEADER = "x-dfguard-timestamp"


class WebhookVerificationError(Exception):
    """The callback cannot be trusted; answer it with 401 (dfguard retries, then gives up)."""


class MissingHeaders(WebhookVerificationError):
    """No signature or no timestamp header: an unsigned or foreign request."""


class StaleTimestamp(WebhookVerificationError):
    """The timestamp is malformed or outside the tolerance (a replay, or a clock badly off)."""


class InvalidSignature(WebhookVerificationError):
    """No signature matches any of the secrets: a forged or altered body, or the wrong secret."""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """One `sha256=<hex>` signature, as the gateway computes it."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():  # case-insensitive whatever mapping the framework hands over
        if key.lower() == name:
            return value
    return None


def verify_callback(
    secret: str | Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    tolerance_seconds: float = 300,
    *,
    now: float | None = None,
) -> None:
    """Return if the callback is genuine; raise a `WebhookVerificationError` saying why it is not.

    `secret` may be a list: during a rotation the receiver accepts the old and the new secret. `body` must be
    the raw request body, byte for byte (not re-serialised JSON)."""
    secrets = [secret] if isinstance(secret, str) else list(secret)
    if not secrets or not all(secrets):
        raise ValueError("at least one non-empty secret is required")
    signatures = _header(headers, SIGNATURE_HEADER)
    timestamp = _header(headers, TIMESTAMP_HEADER)
    if not signatures or not timestamp:
        raise MissingHeaders(f"the callback lacks {SIGNATURE_HEADER} or {TIMESTAMP_HEADER}")
    try:
        sent = int(timestamp)
    except ValueError:
        raise StaleTimestamp(f"{TIMESTAMP_HEADER} is not a Unix time: {timestamp[:32]!r}") from None
    skew = abs((time.time() if now is None else now) - sent)
    if skew > tolerance_seconds:
        raise StaleTimestamp(
            f"the callback's timestamp is {skew:.0f} s off (tolerance {tolerance_seconds:g} s)"
        )
    offered = [s.strip() for s in signatures.split(",") if s.strip()]
    matched = False
    for key in secrets:  # every comparison runs, so timing does not reveal which secret or signature matched
        expected = sign(key, timestamp, body)
        for candidate in offered:
            matched |= hmac.compare_digest(expected.encode(), candidate.encode())
    if not matched:
        raise InvalidSignature("no signature matches the secret(s)")
