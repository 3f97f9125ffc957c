"""The gateway's outermost ASGI layer: request ids, request metrics, the in-flight bound, the last 500.

It wraps Starlette's whole middleware stack, `ServerErrorMiddleware` included, so no answer escapes it: the
500 of an unhandled exception is counted in `dfguard_http_requests_total` and carries `x-request-id` like
every other response (an `@app.middleware("http")` sits *inside* `ServerErrorMiddleware`, never sees those).
The in-flight bound replaces uvicorn's `limit_concurrency`, which counts idle keep-alive connections and
answers a plain-text 503 without Retry-After that no metric sees.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Mapping

from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics

__all__ = ["CLIENT_CLOSED_REQUEST", "Edge", "error_response"]

log = logging.getLogger("dfguard.api")

CLIENT_CLOSED_REQUEST = 499  # nginx's code for a client that left before its answer: no server error
_PROBES = frozenset({"/healthz", "/readyz", "/metrics"})  # never refused: a busy pod is still alive
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # a caller's id is echoed and logged: keep it tame


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The one error body, `{"error": {"code", "message"}}`, counted by code."""
    metrics.ERRORS.labels(code=code).inc()
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _REQUEST_ID.fullmatch(candidate):
                return candidate
            break
    return uuid.uuid4().hex


class Edge:
    """Wraps the app: every HTTP answer is metered and tagged; past `limit` requests in flight, 429."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        status: int | None = None
        finished = False

        async def tagged(message: Message) -> None:
            nonlocal status, finished
            if message["type"] == "http.response.start":
                status = int(message["status"])
                MutableHeaders(scope=message)["x-request-id"] = request_id
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                finished = True
            await send(message)

        counted = scope["path"] not in _PROBES
        try:
            if counted and self.in_flight >= self.limit:
                refuse = error_response(
                    429,
                    "over_capacity",
                    f"{self.limit} requests are in progress; retry later",
                    {"retry-after": "1"},
                )
                await refuse(scope, receive, tagged)
                return
            self.in_flight += counted
            try:
                await self.app(scope, receive, tagged)
            finally:
                self.in_flight -= counted
            if status is None:  # the server would answer a bare 500 of its own
                await error_response(500, "internal_error", "no response")(scope, receive, tagged)
        except Exception as exc:
            if status is None:
                log.error("unhandled error", exc_info=exc, extra={"request_id": request_id})
                await error_response(500, "internal_error", "internal error")(scope, receive, tagged)
            elif not finished:
                raise  # half an answer went out: the server can only close the connection
            # else: ServerErrorMiddleware answered with the app's 500 handler, which logged it once already
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            labels = {"route": route, "method": scope["method"], "code": str(status or 500)}
            metrics.REQUESTS.labels(**labels).inc()
            metrics.REQUEST_DURATION.labels(**labels).observe(time.perf_counter() - started)
