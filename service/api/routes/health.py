"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.schemas import Health

router = APIRouter()


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Any:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, summary="Models loaded and the inference backend reachable")
async def readyz(request: Request) -> Any:
    pipeline = getattr(request.app.state, "pipeline", None)
    if pipeline is None:
        return JSONResponse(Health(status="unavailable", detail="models not loaded").model_dump(), 503)
    if not pipeline.backend.ready():
        detail = "inference backend not ready"
        return JSONResponse(Health(status="unavailable", detail=detail).model_dump(), 503)
    return Health(status="ok")


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus_metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
