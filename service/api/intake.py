"""Turn a scoring request into a media file on local disk: a streamed upload or a fetched URL."""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from service.api.uploads import receive_upload
from service.config import Settings
from service.errors import InvalidRequest, UnsupportedContentType
from service.sources import FetchPolicy, fetch_to_file

__all__ = ["Intake", "read_media"]

_JSON_LIMIT = 64 * 1024


@dataclass
class Intake:
    path: Path
    fields: dict[str, str] = field(default_factory=dict)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


async def _json_body(request: Request) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _JSON_LIMIT:
            raise InvalidRequest(f"JSON bodies are limited to {_JSON_LIMIT} bytes")
    return bytes(body)


M = TypeVar("M", bound=BaseModel)


def _spool(settings: Settings) -> str | None:
    return str(settings.upload_dir) if settings.upload_dir is not None else None


async def read_media(
    request: Request, settings: Settings, policy: FetchPolicy, model: type[M]
) -> tuple[Intake, M | None]:
    """Media of a multipart upload (`file` part) or of a JSON body `{"url": ...}` parsed as `model`."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        upload = await receive_upload(
            request, settings.max_media_bytes, _spool(settings), max_parts=settings.max_form_parts
        )
        return Intake(upload.path, upload.fields), None
    if ctype == "application/json":
        raw = await _json_body(request)
        try:
            body = model.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "body"
            raise InvalidRequest(f"invalid JSON body at {where}: {first.get('msg')}") from None
        url = str(body.model_dump()["url"])  # every intake model has a url
        fd, name = tempfile.mkstemp(prefix="dfguard-fetch-", dir=_spool(settings))
        os.close(fd)
        intake = Intake(Path(name))
        try:
            await fetch_to_file(url, intake.path, policy)
        except BaseException:
            intake.remove()
            raise
        return intake, body
    raise UnsupportedContentType(
        "send multipart/form-data with a `file` part, or application/json with a `url`"
    )
