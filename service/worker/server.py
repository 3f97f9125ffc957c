"""The worker's HTTP surface on its metrics port: `/metrics`, `/healthz` (liveness) and `/readyz` (readiness).

* `/healthz` 200 while the process is alive and its consume loop ticks (a loop stuck longer than the group's
  `max.poll.interval.ms` would be evicted anyway: restart it). A held worker is healthy.
* `/readyz` 200 while the consumer is a member of its group. A held worker is ready on purpose: readiness
  gates rolling updates (`maxUnavailable: 0`), and a held worker must stay replaceable.
Both answer JSON with the hold state and each dependency's last probe, for a person with `curl`.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from service.worker.runner import Worker

__all__ = ["WorkerServer"]

log = logging.getLogger(__name__)


class WorkerServer:
    """A small threaded HTTP server in a daemon thread; `close()` stops it."""

    def __init__(self, worker: Worker, host: str, port: int) -> None:
        self.worker = worker
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # probes every few seconds: no access log
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    ok, body = outer.probe(path)
                    self._send(200 if ok else 503, json.dumps(body).encode(), "application/json")
                else:
                    self._send(404, b'{"status": "not_found"}', "application/json")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="dfguard-worker-http", daemon=True
        )
        self._thread.start()
        log.info("worker: /metrics, /healthz, /readyz on %s:%d", host, self.port)

    def probe(self, path: str) -> tuple[bool, dict[str, Any]]:
        w = self.worker
        held_since = w.health.held_since
        body: dict[str, Any] = {
            "held": held_since is not None,
            "held_since": held_since,
            "dependencies": w.health.status(),
            "member": w.ready.is_set(),
        }
        if path == "/healthz":
            ok = w.alive()
            body["status"] = "ok" if ok else f"loop stalled for more than {w.stalled_after:g} s"
        else:
            ok = w.ready.is_set()
            body["status"] = "ok" if ok else "not a member of the consumer group yet"
        return ok, body

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
