"""`GET /v1/decisions/{video_id}`: the stored decision for one of the caller's videos (tenant-scoped)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Path, Request
from sqlalchemy.exc import SQLAlchemyError

from service.api.auth import CallerDep
from service.api.openapi import ERROR_RESPONSES
from service.errors import NotFound, StoreUnavailable
from service.schemas import DecisionRecord

router = APIRouter()


@router.get(
    "/v1/decisions/{video_id:path}",  # video ids may hold `/` (the upload schema allows it)
    response_model=DecisionRecord,
    summary="The moderation decision stored for a video (made by the Kafka worker), with its audit trail",
    responses=ERROR_RESPONSES,
)
async def get_decision(
    request: Request, who: CallerDep, video_id: str = Path(min_length=1, max_length=256)
) -> Any:
    store = request.app.state.store
    try:
        stored = await asyncio.to_thread(store.get, who.tenant, video_id)
    except SQLAlchemyError as exc:  # unreachable, or its schema not current: 503 with Retry-After
        raise StoreUnavailable(f"the decision store is unavailable ({type(exc).__name__})") from exc
    if stored is None:
        raise NotFound(f"no decision for video {video_id} of this tenant")
    return stored.record
