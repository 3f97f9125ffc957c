"""Stream a multipart upload to a temporary file, enforcing the size limit while it arrives.

Nothing is buffered whole in memory: the body is parsed chunk by chunk (python-multipart) and the `file` part
goes straight to disk; the request is refused with 413 as soon as the declared Content-Length or the bytes
received pass the limit, so an oversized upload costs at most the limit in disk and one chunk in memory.

Every fault of the body is the client's, a 400 `invalid_request`: whatever python-multipart rejects (boundary,
part headers, their size), more than `max_parts` parts, and a body that ends before its closing boundary (a
truncated upload must not be scored as if it were the whole file). A client that goes away mid-upload raises
Starlette's `ClientDisconnect`; the temp file is removed on every way out.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from service.errors import EmptyMedia, InvalidRequest, MediaTooLarge

__all__ = ["Upload", "receive_upload"]

_FIELD_LIMIT = 64 * 1024  # bytes of all non-file fields together
_OVERHEAD = 64 * 1024  # multipart boundaries and part headers on top of the file itself


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
    request: Request, max_bytes: int, tmp_dir: str | None = None, *, max_parts: int = 16
) -> Upload:
    """Read a `multipart/form-data` body whose `file` part is the media; other parts become `fields`."""
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
            async for chunk in request.stream():
                received += len(chunk)
                if received > max_bytes + _OVERHEAD:
                    raise MediaTooLarge(f"the upload is over the limit of {max_bytes} bytes")
                _feed(parser.write, chunk)
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
