"""Stream a multipart upload to a temporary file, enforcing the size limit while it arrives.

Nothing is buffered whole in memory: the body is parsed chunk by chunk (python-multipart) and the `file` part
goes straight to disk; the request is refused with 413 as soon as the declared Content-Length or the bytes
received pass the limit, so an oversized upload costs at most the limit in disk and one chunk in memory.

A body that arrives too slowly is cut with 408 `upload_timeout`: past the whole-upload deadline, or behind the
minimum rate. The rate is a leaky bucket: it starts with (and is capped at) `min_rate x window` bytes of
credit and drains at `min_rate`, so a transfer may stall for at most `window` seconds (a mobile hand-over)
whatever it sent before, and a trickle below `min_rate` is cut within about `window` seconds of its start.

Every other fault of the body is the client's, a 400 `invalid_request`: whatever python-multipart rejects
(boundary, part headers, their size), more than `max_parts` parts, and a body that ends before its closing
boundary (a truncated upload must not be scored as if it were the whole file). A client that goes away
mid-upload raises Starlette's `ClientDisconnect`; the temp file is removed on every way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from service import metrics
from service.errors import EmptyMedia, InvalidRequest, MediaTooLarge, UploadTimeout

__all__ = ["Pace", "Upload", "receive_upload"]

_FIELD_LIMIT = 64 * 1024  # bytes of all non-file fields together
_OVERHEAD = 64 * 1024  # multipart boundaries and part headers on top of the file itself


@dataclass(frozen=True)
class Pace:
    """How fast a body must arrive: whole-upload deadline, minimum rate (0: none), the stall forgiven."""

    timeout_seconds: float
    min_bytes_per_second: float = 0.0
    window_seconds: float = 30.0


class _Meter:
    """When an upload must be cut if no further byte arrives (loop time): its deadline or its rate."""

    def __init__(self, pace: Pace, now: float) -> None:
        self.pace = pace
        self.deadline = now + pace.timeout_seconds
        self.cap = pace.min_bytes_per_second * pace.window_seconds
        self.credit = self.cap
        self.last = now

    def feed(self, n: int, now: float) -> None:
        rate = self.pace.min_bytes_per_second
        self.credit = min(self.cap, self.credit - rate * (now - self.last) + n)
        self.last = now

    def cut_at(self) -> float | None:
        """Loop time of the cut, None for never (`asyncio.timeout_at` takes None, not infinity)."""
        rate = self.pace.min_bytes_per_second
        starved = self.last + self.credit / rate if rate > 0 else math.inf
        when = min(self.deadline, starved)
        return None if math.isinf(when) else when

    def reason(self, now: float) -> str:
        return "deadline" if now >= self.deadline else "too_slow"


@dataclass
class Upload:
    path: Path
    size: int
    filename: str | None
    fields: dict[str, str] = field(default_factory=dict)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class _State:
    def __init__(self, dest: IO[bytes], max_bytes: int, max_parts: int) -> None:
        self.dest = dest
        self.max_bytes = max_bytes
        self.max_parts = max_parts
        self.parts = 0
        self.ended = False
        self.header_field = b""
        self.header_value = b""
        self.headers: dict[bytes, bytes] = {}
        self.name: str | None = None
        self.filename: str | None = None
        self.is_file = False
        self.file_seen = False
        self.size = 0
        self.field_bytes = 0
        self.value = bytearray()
        self.fields: dict[str, str] = {}

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > self.max_parts:
            raise InvalidRequest(f"a multipart body may have at most {self.max_parts} parts")
        self.headers, self.value = {}, bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_field.lower()] = self.header_value
        self.header_field, self.header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self.headers.get(b"content-disposition", b""))
        self.name = params.get(b"name", b"").decode("utf-8", "replace")
        self.is_file = self.name == "file"
        if self.is_file:
            if self.file_seen:
                raise InvalidRequest("only one `file` part is allowed")
            self.file_seen = True
            raw = params.get(b"filename")
            self.filename = raw.decode("utf-8", "replace") if raw is not None else None

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        n = end - start
        if self.is_file:
            self.size += n
            if self.size > self.max_bytes:
                raise MediaTooLarge(f"the upload is over the limit of {self.max_bytes} bytes")
            self.dest.write(data[start:end])
        else:
            self.field_bytes += n
            if self.field_bytes > _FIELD_LIMIT:
                raise InvalidRequest(f"form fields other than `file` are limited to {_FIELD_LIMIT} bytes")
            self.value += data[start:end]

    def on_part_end(self) -> None:
        if not self.is_file and self.name:
            self.fields[self.name] = self.value.decode("utf-8", "replace")

    def on_end(self) -> None:
        self.ended = True


def _feed(write: Callable[[bytes], object], chunk: bytes) -> None:
    try:
        write(chunk)
    except (MediaTooLarge, InvalidRequest):
        raise
    except Exception as exc:  # any parser complaint means a malformed body
        raise InvalidRequest(f"malformed multipart body: {exc}") from exc


async def receive_upload(
    request: Request,
    max_bytes: int,
    tmp_dir: str | None = None,
    *,
    max_parts: int = 16,
    pace: Pace | None = None,
) -> Upload:
    """Read a `multipart/form-data` body whose `file` part is the media; other parts become `fields`."""
    metrics.UPLOADS_IN_PROGRESS.inc()
    try:
        return await _receive(request, max_bytes, tmp_dir, max_parts, pace or Pace(math.inf))
    except UploadTimeout:
        raise  # counted where it is raised, with its reason
    except MediaTooLarge:
        metrics.UPLOADS_CUT.labels(reason="too_large").inc()
        raise
    except (InvalidRequest, EmptyMedia):
        metrics.UPLOADS_CUT.labels(reason="invalid").inc()
        raise
    except BaseException:  # the client went away (ClientDisconnect), or the server is stopping
        metrics.UPLOADS_CUT.labels(reason="client_gone").inc()
        raise
    finally:
        metrics.UPLOADS_IN_PROGRESS.dec()


async def _receive(
    request: Request, max_bytes: int, tmp_dir: str | None, max_parts: int, pace: Pace
) -> Upload:
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise InvalidRequest("expected multipart/form-data with a boundary")
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            declared_n = int(declared)
        except ValueError:
            raise InvalidRequest("Content-Length is not a number") from None
        if declared_n > max_bytes + _OVERHEAD:
            raise MediaTooLarge(f"the upload ({declared_n} bytes) is over the limit of {max_bytes} bytes")
    fd, name = tempfile.mkstemp(prefix="dfguard-upload-", dir=tmp_dir)
    upload = Upload(Path(name), 0, None)
    try:
        with os.fdopen(fd, "wb") as dest:
            state = _State(dest, max_bytes, max_parts)
            parser = MultipartParser(
                boundary,
                {
                    "on_part_begin": state.on_part_begin,
                    "on_header_field": state.on_header_field,
                    "on_header_value": state.on_header_value,
                    "on_header_end": state.on_header_end,
                    "on_headers_finished": state.on_headers_finished,
                    "on_part_data": state.on_part_data,
                    "on_part_end": state.on_part_end,
                    "on_end": state.on_end,
                },
                max_size=max_bytes + _OVERHEAD,
            )
            received = 0
            loop = asyncio.get_running_loop()
            meter = _Meter(pace, loop.time())
            try:
                async with asyncio.timeout_at(meter.cut_at()) as limit:
                    async for chunk in request.stream():
                        metrics.UPLOAD_BYTES.inc(len(chunk))
                        meter.feed(len(chunk), loop.time())
                        limit.reschedule(meter.cut_at())
                        received += len(chunk)
                        if received > max_bytes + _OVERHEAD:
                            raise MediaTooLarge(f"the upload is over the limit of {max_bytes} bytes")
                        _feed(parser.write, chunk)
            except TimeoutError:
                reason = meter.reason(loop.time())
                metrics.UPLOADS_CUT.labels(reason=reason).inc()
                if reason == "deadline":
                    message = f"the upload did not finish within {pace.timeout_seconds:g} s"
                else:
                    message = (
                        f"the upload fell below {pace.min_bytes_per_second:g} bytes/s "
                        f"over {pace.window_seconds:g} s"
                    )
                raise UploadTimeout(message) from None
            _feed(lambda _: parser.finalize(), b"")
        if not state.ended:
            raise InvalidRequest("the multipart body ended before its closing boundary (truncated upload?)")
        if not state.file_seen:
            raise InvalidRequest("the multipart body has no `file` part")
        if state.size == 0:
            raise EmptyMedia("the uploaded file is empty (0 bytes)")
        upload.size, upload.filename, upload.fields = state.size, state.filename, state.fields
        return upload
    except BaseException:
        upload.remove()
        raise
