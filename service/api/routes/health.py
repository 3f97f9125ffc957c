"""Liveness, readiness and Prometheus metrics.

`/readyz` probes each dependency the gateway serves with (the inference backend's readiness, the decision
store's `SELECT 1` after its schema check) and names those that are down. Only the backend decides readiness
(503 with Retry-After): scoring, the gateway's job, needs no store, so a database outage must not take every
gateway out of its Service; it reports `degraded` and `/v1/decisions` answers 503 `store_unavailable` itself.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError

from service.pipeline import Pipeline
from service.schemas import Health
from service.store import DecisionStore, brief_error

router = APIRouter()


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Any:
    return Health(status="ok")


def _backend_problem(pipeline: Pipeline) -> str | None:
    return None if pipeline.backend.ready() else f"inference backend ({pipeline.backend.name}) not ready"


def _store_problem(store: DecisionStore) -> str | None:
    try:
        store.ping()
    except SQLAlchemyError as exc:
        return f"decision store unavailable: {brief_error(exc)}"
    return None


@router.get(
    "/readyz",
    response_model=Health,
    summary="Models loaded and the inference backend reachable (the decision store is reported too)",
    responses={503: {"model": Health, "description": "The inference backend is down (see `dependencies`)"}},
)
async def readyz(request: Request) -> Any:
    state = request.app.state
    retry = {"retry-after": str(state.settings.unavailable_retry_after_seconds)}
    pipeline = getattr(state, "pipeline", None)
    if pipeline is None:
        return JSONResponse(Health(status="unavailable", detail="models not loaded").model_dump(), 503, retry)
    backend, store = await asyncio.gather(
        asyncio.to_thread(_backend_problem, pipeline), asyncio.to_thread(_store_problem, state.store)
    )
    problems = {"backend": backend, "store": store}
    dependencies: dict[str, Any] = {name: "down" if p else "up" for name, p in problems.items()}
    detail = "; ".join(p for p in problems.values() if p)
    if backend is None:
        return Health(status="degraded" if store else "ok", detail=detail, dependencies=dependencies)
    body = Health(status="unavailable", detail=detail, dependencies=dependencies)
    return JSONResponse(body.model_dump(), 503, retry)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus_metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
