"""Turn a scoring request into a sniffed media file on local disk: a streamed upload or a fetched URL.

Reading a body (or fetching a URL) is I/O, not scoring: it holds one of `max_uploads` upload slots, shared
fairly between tenants (`FairSlots`; with several tenants one holds at most half of them), never a scoring
slot. A request waits up to `upload_slot_wait_seconds` for one (a slot held by a transfer under the minimum
rate frees within `upload_rate_window_seconds`), then gets 429; with several tenants, so does a tenant over
its share of the slots and their waiting room (as large as the pool) when that room is full. The media's
first bytes are sniffed before it is handed on, so a file dfguard cannot analyse never takes a scoring slot
either.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from service import metrics
from service.api.fairness import FairSlots, SlotsFull
from service.api.uploads import Pace, receive_upload
from service.config import Settings
from service.errors import InvalidRequest, OverCapacity, UnsupportedContentType, UploadTimeout
from service.media.sniff import SNIFF_BYTES, sniff
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


def upload_pace(settings: Settings) -> Pace:
    return Pace(
        settings.upload_timeout_seconds,
        settings.upload_min_bytes_per_second,
        settings.upload_rate_window_seconds,
    )


async def read_media(request: Request, model: type[M], tenant: str) -> tuple[Intake, M | None]:
    """Media of a multipart upload (`file` part) or of a JSON body `{"url": ...}` parsed as `model`, sniffed,
    read while holding one of the gateway's upload slots for `tenant`."""
    state = request.app.state
    settings: Settings = state.settings
    policy: FetchPolicy = state.fetch_policy
    uploads: FairSlots = state.uploads
    try:
        waited = await uploads.acquire(tenant, settings.upload_slot_wait_seconds)
    except SlotsFull:
        metrics.TENANT_THROTTLED.labels(tenant=tenant, reason="over_capacity").inc()
        raise
    except TimeoutError:
        raise OverCapacity(
            f"no upload slot came free within {settings.upload_slot_wait_seconds:g} s; retry later",
            retry_after_seconds=max(1, round(settings.upload_rate_window_seconds)),
        ) from None
    metrics.TENANT_QUEUE_WAIT.labels(tenant=tenant, pool="upload").observe(waited)
    try:
        intake, body = await _read(request, settings, policy, model, tenant)
    finally:
        uploads.release(tenant)
    try:
        with intake.path.open("rb") as f:
            sniff(f.read(SNIFF_BYTES))
    except BaseException:
        intake.remove()
        raise
    return intake, body


async def _read(
    request: Request, settings: Settings, policy: FetchPolicy, model: type[M], tenant: str
) -> tuple[Intake, M | None]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        upload = await receive_upload(
            request,
            settings.max_media_bytes,
            _spool(settings),
            max_parts=settings.max_form_parts,
            pace=upload_pace(settings),
        )
        return Intake(upload.path, upload.fields), None
    if ctype == "application/json":
        try:  # at most 64 KiB: it has the stall allowance of an upload to arrive whole
            async with asyncio.timeout(settings.upload_rate_window_seconds):
                raw = await _json_body(request)
        except TimeoutError:
            metrics.UPLOADS_CUT.labels(reason="too_slow").inc()
            raise UploadTimeout(
                f"the JSON body did not arrive within {settings.upload_rate_window_seconds:g} s"
            ) from None
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
            await fetch_to_file(url, intake.path, policy, tenant=tenant)  # s3://: the tenant's buckets
        except BaseException:
            intake.remove()
            raise
        return intake, body
    raise UnsupportedContentType(
        "send multipart/form-data with a `file` part, or application/json with a `url`"
    )
