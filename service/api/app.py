"""The FastAPI gateway: lifespan (pipeline, store), error mapping; `edge.py` meters and tags every answer.

Every error leaves as `{"error": {"code", "message"}}` with the status of its `ModerationError` class
(one table, `service/errors.py`); validation problems are 400 `invalid_request`, unknown routes 404
`not_found` (405 with `Allow`), 503s carry `Retry-After`, a client that leaves mid-request is counted (499,
`dfguard_client_disconnects_total`), not an error, and anything unexpected is a 500 `internal_error` without a
traceback in the body.

The gateway starts whatever its dependencies do: with the decision store or the inference backend down it
logs so, `/readyz` names what is down (503), and the requests that need it answer 503 until it is back.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp

from service import __version__, metrics
from service.api.edge import CLIENT_CLOSED_REQUEST, Edge, error_response
from service.api.fairness import FairSlots, TenantRates
from service.api.jobs import JobStore
from service.api.routes import decisions, evidence, health, jobs, score
from service.api.scoring import ScoringService
from service.compose import build_evidence_keeper, build_pipeline, build_shadow_lane
from service.config import Settings
from service.errors import MediaTooLarge, ModerationError, OverCapacity, UploadTimeout, classify
from service.pipeline import Pipeline
from service.sources import FetchPolicy
from service.store import DecisionStore, brief_error

__all__ = ["create_app"]

log = logging.getLogger("dfguard.api")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "invalid_request", 413: "media_too_large"}


class _Gateway(FastAPI):
    def build_middleware_stack(self) -> ASGIApp:
        """Starlette's stack (its ServerErrorMiddleware outermost) inside `Edge`, so nothing bypasses it."""
        return Edge(super().build_middleware_stack(), self.state.settings.http_in_flight_limit)


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
        # Lazy: the database is touched on first use, so the gateway starts (and serves scoring) while the
        # store is down; the schema is migrated (or checked) when it first answers.
        store = DecisionStore(settings.database_url, migrate=settings.database_migrate_on_start, lazy=True)
        app.state.store = store
        # Shadow rows go to the same store; while it is down they are counted and lost, nothing else.
        shadow = await asyncio.to_thread(build_shadow_lane, settings, store.put_shadow)
        app.state.shadow = shadow
        # Evidence of jobs (and, with the worker, of its decisions) goes to the same store.
        evidence = await asyncio.to_thread(build_evidence_keeper, settings, lambda: store)
        app.state.evidence = evidence
        if evidence is not None:
            evidence.start_purging()
        app.state.scoring = ScoringService(settings, p, shadow, evidence)
        try:
            await asyncio.to_thread(store.ensure_schema)
        except SQLAlchemyError as exc:
            log.warning("decision store unavailable at start-up", extra={"error": brief_error(exc)})
        if not await asyncio.to_thread(p.backend.ready):
            log.warning("inference backend not ready at start-up", extra={"backend": p.backend.name})
        for m in p.models:
            metrics.MODEL_INFO.labels(name=m.name, version=m.version).set(1)
        worker_thread = None
        if with_worker:
            from service.worker import build_worker  # Kafka only where it is used

            worker = build_worker(settings, p, store, shadow=shadow, evidence=evidence)
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
            # The low-priority lanes finish their queues together, before the store they write to.
            lanes = [lane.close for lane in (shadow, evidence) if lane is not None]
            await asyncio.gather(*(asyncio.to_thread(close) for close in lanes))
            store.close()
            if pipeline is None:
                p.close()

    app = _Gateway(
        title="dfguard",
        version=__version__,
        summary="Deepfake moderation: score videos and images for face manipulation.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.fetch_policy = FetchPolicy.from_settings(settings)
    app.state.jobs = JobStore(settings.max_jobs, settings.job_ttl_seconds, settings.max_pending_jobs)
    app.state.rates = TenantRates(settings)
    # With several tenants the waiting room is as large as the pool: past it, a tenant over its share of the
    # places gets 429 instead of piling up against DFG_MAX_HTTP_IN_FLIGHT. With one tenant there is nobody to
    # protect, and its normal uploads must be able to wait behind slow ones until those are cut.
    several = len(settings.tenants) > 1
    app.state.uploads = FairSlots(
        "upload",
        settings.max_uploads,
        settings.max_uploads if several else None,
        lambda tenant: settings.limits_for(tenant).weight,
        settings.upload_cap_for,
    )
    metrics.init_tenant_series(settings.tenants)
    app.state.tasks = set()
    app.include_router(score.router, tags=["scoring"])
    app.include_router(jobs.router, tags=["jobs"])
    # Evidence first: `/v1/decisions/{video_id:path}` would also match `.../{video_id}/evidence`.
    app.include_router(evidence.router, tags=["evidence"])
    app.include_router(decisions.router, tags=["decisions"])
    app.include_router(health.router, tags=["operations"])

    @app.exception_handler(ModerationError)
    async def _moderation_error(request: Request, exc: ModerationError) -> JSONResponse:
        headers = None
        if isinstance(exc, OverCapacity):
            retry = exc.retry_after_seconds or request.app.state.scoring.retry_after_seconds()
            headers = {"retry-after": str(retry)}
        outcome = classify(exc)  # the one taxonomy: status and code as the worker and docs/worker.md see them
        if outcome.http_status == 503:
            headers = {"retry-after": str(settings.unavailable_retry_after_seconds)}
        if isinstance(exc, UploadTimeout | MediaTooLarge):  # the rest of the body is not read: close
            headers = {"connection": "close"}
        return error_response(outcome.http_status, outcome.code, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = f"invalid request at {where}: {first.get('msg', 'invalid')}"
        return error_response(400, "invalid_request", message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), exc.headers)  # 405 keeps its Allow

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: ClientDisconnect) -> Response:
        # The client left before its body was read (the upload's temp file is already removed): nothing to
        # answer and nothing wrong with the service, so no error code and no traceback.
        route = getattr(request.scope.get("route"), "path", "unmatched")
        metrics.CLIENT_DISCONNECTS.labels(route=route).inc()
        log.info("client disconnected", extra={"route": route, "request_id": request.state.request_id})
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc, extra={"request_id": request.state.request_id})
        outcome = classify(exc)  # anything unexpected: 500 internal_error
        return error_response(outcome.http_status, outcome.code, "internal error")

    return app
