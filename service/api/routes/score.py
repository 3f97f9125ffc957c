"""`POST /v1/score`: score an upload or a URL synchronously; the same document as `dfguard score --json`."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from service import metrics
from service.api.auth import Caller, require_writer
from service.api.intake import read_media
from service.api.openapi import ERROR_RESPONSES, media_body
from service.api.tenancy import admit_request
from service.schemas import ScoreResult, ScoreUrlRequest

router = APIRouter()


@router.post(
    "/v1/score",
    response_model=ScoreResult,
    summary="Score a video, image or audio file now",
    responses=ERROR_RESPONSES,
    openapi_extra=media_body(ScoreUrlRequest),
)
async def score(request: Request, who: Annotated[Caller, Depends(require_writer)]) -> Any:
    """Rate limit, then the upload (its own slots and pace), then a scoring slot; the deadline
    (`request_timeout_seconds`) runs from the moment the media is on disk."""
    state = request.app.state
    admit_request(state, who.tenant)
    intake, _ = await read_media(request, ScoreUrlRequest, who.tenant)
    try:
        deadline = asyncio.get_running_loop().time() + state.settings.request_timeout_seconds
        result = await state.scoring.score(intake.path, deadline, who.tenant)
    finally:
        intake.remove()
    metrics.observe_result(result.decision, result.timings_ms.model_dump())
    return result
