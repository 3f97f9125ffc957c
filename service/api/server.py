"""The gateway's HTTP server: uvicorn with its timeouts set explicitly and a guard on the request head.

uvicorn bounds neither how long a request's line and headers may take to arrive nor (with httptools) their
size, so a client trickling headers holds a connection for ever. `GuardedHttpTools` gives every request head
`http_header_timeout_seconds` from its connection (or its first byte, on a kept-alive connection) and
`http_max_header_bytes`; past either it answers 408 or 431 with the gateway's JSON error body and closes.
It also answers an unparsable request with that body instead of uvicorn's plain text. The app itself never
sees these requests, so they are counted in `dfguard_http_connections_cut_total` here.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service import metrics
from service.config import Settings

__all__ = ["guarded_protocol", "server_config"]

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a refused request (httptools reports it as a parse
    error, which `send_400_response` then ignores on the closing connection)."""


def guarded_protocol(header_timeout: float, max_header_bytes: int) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with a deadline and a size limit on every request head."""

    class GuardedHttpTools(HttpToolsProtocol):
        _timer: asyncio.TimerHandle | None = None
        _head_bytes = 0  # of the request line's URL and the headers, counted as they are parsed
        _in_head = True

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            if self._timer is None:
                self._timer = self.loop.call_later(header_timeout, self._head_too_slow)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _count(self, n: int) -> None:
            self._head_bytes += n
            if self._head_bytes > max_header_bytes:
                self._refuse(431, "headers_too_large", f"request headers over {max_header_bytes} bytes")
                raise _Refused  # stop the parser: the rest of this read must not start a request

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head, self._head_bytes = True, 0
            self._arm()  # a kept-alive connection's next request: its own deadline from its first byte

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._disarm()
            if not self.transport.is_closing():  # refused already: never start the app for it
                super().on_headers_complete()

        def _head_too_slow(self) -> None:
            self._timer = None
            if self._in_head:
                message = f"the request line and headers did not arrive within {header_timeout:g} s"
                self._refuse(408, "header_timeout", message)

        def send_400_response(self, msg: str) -> None:
            if self.transport.is_closing():  # the parser stopped because the request was refused
                return
            metrics.ERRORS.labels(code="invalid_request").inc()
            self._answer(400, "invalid_request", msg)

        def _refuse(self, status: int, reason: str, message: str) -> None:
            if self.transport.is_closing():
                return
            metrics.HTTP_CONNECTIONS_CUT.labels(reason=reason).inc()
            code = "request_timeout" if status == 408 else "headers_too_large"
            metrics.ERRORS.labels(code=code).inc()
            self._answer(status, code, message)

        def _answer(self, status: int, code: str, message: str) -> None:
            if self.transport.is_closing():
                return
            body = json.dumps({"error": {"code": code, "message": message}}).encode()
            head = [
                b"HTTP/1.1 %d %s" % (status, _REASONS[status]),
                b"content-type: application/json",
                b"content-length: %d" % len(body),
                b"connection: close",
            ]
            self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
            self.transport.close()

    return GuardedHttpTools


def server_config(app: Any, settings: Settings, host: str, port: int, **extra: Any) -> uvicorn.Config:
    """The one uvicorn configuration of the gateway (the CLI and the test servers share it)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=guarded_protocol(settings.http_header_timeout_seconds, settings.http_max_header_bytes),
        log_config=None,
        access_log=False,
        timeout_keep_alive=settings.http_keep_alive_seconds,  # type: ignore[arg-type]  # a float works
        # No `limit_concurrency`: it counts idle keep-alive connections and answers a bare 503 no metric sees;
        # the app bounds requests in flight itself (DFG_MAX_HTTP_IN_FLIGHT, 429 with Retry-After).
        **extra,
    )
