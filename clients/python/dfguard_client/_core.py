"""The request logic of both clients, written once and free of I/O.

Every API call is a *plan*: a generator that yields effects, an `httpx.Request` to send or a `Sleep`, and is
sent back what the effect produced (the `httpx.Response`, or the `httpx.TransportError` it raised, thrown
in). Building requests, reading answers into models or typed errors, retries with `Retry-After`, backoff and
deadlines all live in the plans; `Client` and `AsyncClient` only perform the effects, with `httpx.Client`
and `time.sleep` or `httpx.AsyncClient` and `asyncio.sleep` (the sans-I/O pattern of h11).

Retries: only 429 (`over_capacity`, `rate_limited`) and 503 (`backend_unavailable`, `store_unavailable`)
are retried: nothing was done, and the gateway says when to come back. The wait is its `Retry-After`
(seconds or an HTTP date), else capped exponential backoff; retrying stops after `max_attempts` sends or
when the next one would start past `retry_timeout` seconds after the first, and the last error is raised
with its `retry_after`. Network errors are not retried: a POST may have been received.
"""

from __future__ import annotations

import email.utils
import errno
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from os import PathLike, fspath
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from dfguard_client._exceptions import DfguardError, TransportError, WaitTimeout
from dfguard_client.errors import BY_CODE
from dfguard_client.models import DecisionRecord, ErrorBody, JobAccepted, JobStatus, ScoreResult

__all__ = ["URL_SCHEMES", "VERSION", "Core", "Done", "Effect", "Plan", "Sleep", "Source", "advance"]

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

Source = str | PathLike[str] | bytes  # a file path, the media's bytes, or a URL the gateway fetches
URL_SCHEMES = ("http://", "https://", "s3://")  # a `str` source starting so is sent as `{"url": ...}`
VERSION = "0.1.0"  # of this distribution: the user agent and `dfguard_client.__version__`


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Done(Generic[T]):
    value: T


Effect = httpx.Request | Sleep
Plan = Generator[Effect, httpx.Response | None, T]


def advance(plan: Plan[T], outcome: httpx.Response | httpx.TransportError | None) -> Effect | Done[T]:
    """Feed a plan what its last effect produced (None to start it); its next effect, or its result."""
    try:
        if isinstance(outcome, httpx.TransportError):
            return plan.throw(outcome)
        return plan.send(outcome)
    except StopIteration as stop:
        value: T = stop.value
        return Done(value)


@dataclass(frozen=True)
class _Body:
    """A request body that can be sent again: a retry re-opens the file rather than holding it in memory."""

    json: dict[str, Any] | None = None
    path: Path | None = None
    content: bytes | None = None
    filename: str = "upload"
    fields: dict[str, str] = field(default_factory=dict)

    @contextmanager
    def encoded(self) -> Iterator[dict[str, Any]]:
        """Keyword arguments of `httpx.Request` for one attempt."""
        if self.json is not None:
            yield {"json": self.json}
        elif self.path is not None:
            with self.path.open("rb") as fh:  # streamed from disk; Content-Length from its size
                yield {"files": {"file": (self.filename, fh)}, "data": self.fields}
        else:
            yield {"files": {"file": (self.filename, self.content or b"")}, "data": self.fields}


def _body(source: Source, filename: str | None, fields: dict[str, str]) -> _Body:
    if isinstance(source, bytes):
        return _Body(content=source, filename=filename or "upload", fields=fields)
    if isinstance(source, str) and source.startswith(URL_SCHEMES):
        return _Body(json={"url": source, **fields})
    path = Path(fspath(source))
    path.stat()  # a missing path is a local mistake, not the gateway's: FileNotFoundError before any request
    if not path.is_file():
        raise IsADirectoryError(errno.EISDIR, "not a regular file", str(path))
    return _Body(path=path, filename=filename or path.name, fields=fields)


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a `Retry-After` header (RFC 9110, section 10.2.3: seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _error(response: httpx.Response) -> DfguardError:
    """The typed error of an error answer; a body not from the gateway (a proxy's page) keeps its status."""
    try:
        detail = ErrorBody.model_validate_json(response.content).error
        code, message = detail.code, detail.message
    except ValidationError:
        code, message = f"http_{response.status_code}", response.text[:200] or response.reason_phrase
    return BY_CODE.get(code, DfguardError)(
        message,
        code=code,
        status=response.status_code,
        request_id=response.headers.get("x-request-id"),
        retry_after=_retry_after(response.headers.get("retry-after")),
    )


def _parse(model: type[M], response: httpx.Response) -> M:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise DfguardError(
            f"the answer is not a {model.__name__}: {first['msg']} at {first['loc']}",
            code="invalid_response",
            status=response.status_code,
            request_id=response.headers.get("x-request-id"),
        ) from None


@dataclass(frozen=True)
class Core:
    """Plans for every API call of one gateway; see the module docstring for the retry rules."""

    base_url: str
    api_key: str | None = None
    timeout: float = 300.0  # seconds per socket operation (connect at most 10), not per call
    max_attempts: int = 5
    retry_timeout: float = 120.0  # seconds from the first send after which no retry starts
    backoff: float = 0.5  # first wait when the gateway names none; doubles, capped at `max_backoff`
    max_backoff: float = 10.0

    def __post_init__(self) -> None:
        url = httpx.URL(self.base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"the gateway's base URL must be http(s)://host[:port], not {self.base_url!r}")

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Request:
        headers = {"accept": "application/json", "user-agent": f"dfguard-client/{VERSION}"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        timeout = httpx.Timeout(self.timeout, connect=min(10.0, self.timeout))
        url = self.base_url.rstrip("/") + path
        # httpx applies a client's timeout only to requests it builds itself: this one carries its own.
        return httpx.Request(
            method, url, headers=headers, extensions={"timeout": timeout.as_dict()}, **kwargs
        )

    def _send(self, request: httpx.Request) -> Plan[httpx.Response]:
        try:
            response = yield request
        except httpx.TransportError as exc:
            raise TransportError(f"{type(exc).__name__}: {exc} ({request.method} {request.url})") from exc
        if response is None:
            raise TypeError("a plan was resumed without the response to its request")
        return response

    def _call(self, method: str, path: str, body: _Body | None = None) -> Plan[httpx.Response]:
        """One request with its retries; the successful response, or the typed error of the last answer."""
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            if body is None:
                response = yield from self._send(self._request(method, path))
            else:
                with body.encoded() as kwargs:
                    response = yield from self._send(self._request(method, path, **kwargs))
            if response.is_success:
                return response
            error = _error(response)
            if response.status_code not in (429, 503) or attempt >= self.max_attempts:
                raise error
            wait = error.retry_after
            if wait is None:
                wait = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
            if time.monotonic() + wait > started + self.retry_timeout:
                raise error
            yield Sleep(wait)

    def score(self, source: Source, filename: str | None = None) -> Plan[ScoreResult]:
        response = yield from self._call("POST", "/v1/score", _body(source, filename, {}))
        return _parse(ScoreResult, response)

    def submit_job(
        self, source: Source, filename: str | None = None, callback_url: str | None = None
    ) -> Plan[JobAccepted]:
        fields = {"callback_url": callback_url} if callback_url else {}
        response = yield from self._call("POST", "/v1/jobs", _body(source, filename, fields))
        return _parse(JobAccepted, response)

    def get_job(self, job_id: str) -> Plan[JobStatus]:
        response = yield from self._call("GET", f"/v1/jobs/{quote(job_id, safe='')}")
        return _parse(JobStatus, response)

    def wait(
        self, job_id: str, timeout: float, poll_interval: float, max_poll_interval: float
    ) -> Plan[JobStatus]:
        """Poll until the job finishes: its status when it succeeded, its error raised when it failed."""
        deadline = time.monotonic() + timeout
        interval = poll_interval
        while True:
            status = yield from self.get_job(job_id)
            if status.status == "succeeded":
                return status
            if status.status == "failed":
                code = status.error.code if status.error else "internal_error"
                message = status.error.message if status.error else "the job failed without an error"
                raise BY_CODE.get(code, DfguardError)(message, code=code)
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(f"job {job_id} is still {status.status} after {timeout:g} s")
            yield Sleep(min(interval, left))
            interval = min(max_poll_interval, interval * 2)

    def get_decision(self, video_id: str) -> Plan[DecisionRecord]:
        response = yield from self._call("GET", f"/v1/decisions/{quote(video_id, safe='')}")
        return _parse(DecisionRecord, response)
