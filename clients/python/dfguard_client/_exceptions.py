"""The base of every error the client raises, and the two it raises on its own behalf.

The subclasses for the gateway's error codes are generated into `dfguard_client.errors` from the service's
taxonomy; these three are written by hand because the service has no counterpart.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = ["DfguardError", "TransportError", "WaitTimeout"]


class DfguardError(Exception):
    """An error answer of the gateway (or of the client itself): a stable `code` and a message.

    `status` is the HTTP status it came with (for a failed job: the status `/v1/score` answers the same error
    with), `request_id` the gateway's `x-request-id` to quote in a support request, `retry_after` the seconds
    the gateway asked to wait (429, 503) when the client's retries ran out."""

    code: str = "error"  # each generated subclass sets its service code; an unknown code is kept per instance
    http_status: ClassVar[int | None] = None  # what the gateway answers this code with

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.status = status if status is not None else self.http_status
        self.request_id = request_id
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class TransportError(DfguardError):
    """The gateway could not be reached or the connection broke (no answer, so no service code)."""

    code = "transport_error"


class WaitTimeout(DfguardError):
    """`wait()` reached its deadline while the job was still queued or running (the job goes on)."""

    code = "wait_timeout"
