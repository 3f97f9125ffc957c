"""`POST /v1/score`: score an upload or a URL synchronously; the same document as `dfguard score --json`."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from service import metrics
from service.api.auth import Caller, require_writer
from service.api.intake import read_media
from service.api.openapi import ERROR_RESPONSES, media_body
from service.errors import DeadlineExceeded
from service.schemas import ScoreResult, ScoreUrlRequest

router = APIRouter()


@router.post(
    "/v1/score",
    response_model=ScoreResult,
    summary="Score a video or image now",
    responses=ERROR_RESPONSES,
    openapi_extra=media_body(ScoreUrlRequest),
)
async def score(request: Request, who: Annotated[Caller, Depends(require_writer)]) -> Any:
    state = request.app.state
    loop = asyncio.get_running_loop()
    deadline = loop.time() + state.settings.request_timeout_seconds
    async with state.scoring.admit():
        try:
            async with asyncio.timeout_at(deadline):
                intake, _ = await read_media(request, state.settings, state.fetch_policy, ScoreUrlRequest)
        except TimeoutError:
            raise DeadlineExceeded("the upload or download did not finish before the deadline") from None
        try:
            result = await state.scoring.score(intake.path, deadline)
        finally:
            intake.remove()
    metrics.observe_result(result.decision, result.timings_ms.model_dump())
    return result
