"""The FastAPI gateway: composition root, error mapping and request metrics.

Every error leaves as `{"error": {"code", "message"}}` with the status of its `ModerationError` class
(one table, `service/errors.py`); validation problems are 400 `invalid_request`, unknown routes 404
`not_found`, anything unexpected 500 `internal_error` without a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import __version__, metrics
from service.api.jobs import JobStore
from service.api.routes import decisions, health, jobs, score
from service.api.scoring import ScoringService
from service.config import Settings
from service.errors import ModerationError, OverCapacity, classify
from service.inference.batcher import MicroBatchingBackend
from service.media import isolation_from_settings, warm_up
from service.pipeline import Pipeline, build_backend, build_detector
from service.sources import FetchPolicy
from service.store import DecisionStore

__all__ = ["create_app"]

log = logging.getLogger("dfguard.api")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "invalid_request", 413: "media_too_large"}


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    metrics.ERRORS.labels(code=code).inc()
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def build_pipeline(settings: Settings) -> Pipeline:
    """The gateway's pipeline: the configured backend behind the cross-request micro-batcher."""
    if settings.decode_isolation == "process":
        warm_up(isolation_from_settings(settings))
    backend = MicroBatchingBackend(
        build_backend(settings), max_batch=settings.max_batch_size, max_wait_ms=settings.batch_max_wait_ms
    )
    return Pipeline(settings, build_detector(settings), backend)


def create_app(
    settings: Settings | None = None, pipeline: Pipeline | None = None, *, with_worker: bool = False
) -> FastAPI:
    """The gateway; `with_worker` also runs the Kafka worker in this process (small deployments), sharing
    the pipeline, so events and HTTP requests are micro-batched together."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        p = pipeline if pipeline is not None else await asyncio.to_thread(build_pipeline, settings)
        app.state.pipeline = p
        app.state.scoring = ScoringService(settings, p)
        app.state.store = await asyncio.to_thread(DecisionStore, settings.database_url)
        for m in p.models:
            metrics.MODEL_INFO.labels(name=m.name, version=m.version).set(1)
        worker_thread = None
        if with_worker:
            from service.worker import build_worker  # Kafka only where it is used

            worker = build_worker(settings, p, app.state.store)
            worker_thread = threading.Thread(target=worker.run, name="dfguard-worker", daemon=True)
            worker_thread.start()
        log.info("ready", extra={"model": p.model_ref.name, "version": p.model_ref.version})
        try:
            yield
        finally:
            if worker_thread is not None:
                worker.stop()
                await asyncio.to_thread(worker_thread.join, settings.worker_shutdown_grace_seconds + 15)
            for task in list(app.state.tasks):
                task.cancel()
            app.state.scoring.close()
            app.state.store.close()
            if pipeline is None and isinstance(p.backend, MicroBatchingBackend):
                p.backend.close()

    app = FastAPI(
        title="dfguard",
        version=__version__,
        summary="Deepfake moderation: score videos and images for face manipulation.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.fetch_policy = FetchPolicy.from_settings(settings)
    app.state.jobs = JobStore(settings.max_jobs, settings.job_ttl_seconds, settings.max_pending_jobs)
    app.state.tasks = set()
    app.include_router(score.router, tags=["scoring"])
    app.include_router(jobs.router, tags=["jobs"])
    app.include_router(decisions.router, tags=["decisions"])
    app.include_router(health.router, tags=["operations"])

    @app.exception_handler(ModerationError)
    async def _moderation_error(request: Request, exc: ModerationError) -> JSONResponse:
        headers = None
        if isinstance(exc, OverCapacity):
            headers = {"retry-after": str(request.app.state.scoring.retry_after_seconds())}
        outcome = classify(exc)  # the one taxonomy: status and code as the worker and docs/worker.md see them
        return _error(outcome.http_status, outcome.code, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(400, "invalid_request", f"invalid request at {where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        outcome = classify(exc)  # anything unexpected: 500 internal_error
        return _error(outcome.http_status, outcome.code, "internal error")

    @app.middleware("http")
    async def _observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        labels = {"route": path, "method": request.method, "code": str(response.status_code)}
        metrics.REQUESTS.labels(**labels).inc()
        metrics.REQUEST_DURATION.labels(**labels).observe(time.perf_counter() - started)
        response.headers["x-request-id"] = request_id
        return response

    return app
