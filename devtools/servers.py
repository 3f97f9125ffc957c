"""Real servers on loopback for tests: the dfguard gateway under uvicorn, and a small HTTP server that plays
a media host and a callback receiver."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from service.api import create_app
from service.api.server import server_config
from service.config import Settings


def free_port(host: str = "127.0.0.1") -> int:
    """A free TCP port on `host` (any loopback address; the media host runs on 127.0.0.2)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until(
    predicate: Callable[[], object], timeout: float, *, interval: float = 0.1, what: str = "condition"
) -> None:
    """Poll `predicate` every `interval` seconds until it is truthy; fail the caller after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


def wait_http_ok(url: str, alive: Callable[[], bool], log: Path, *, what: str, timeout: float = 90) -> None:
    """Poll `url` until it answers 200. A process that exits first, or time running out, fails the caller
    with the tail of the process's log, which is what explains it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise AssertionError(f"{what} exited:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not 200 within {timeout} s:\n{log.read_text()[-4000:]}")


def metric_value(url: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`, read from `url`/metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


@contextmanager
def _uvicorn(config: uvicorn.Config, what: str) -> Iterator[None]:
    """Serve `config` in a thread until the block ends."""
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=what, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@contextmanager
def gateway(settings: Settings, *, with_worker: bool = False) -> Iterator[tuple[str, Any]]:
    """Run the gateway app on 127.0.0.1 in a thread; yield (base_url, app)."""
    app = create_app(settings, with_worker=with_worker)
    port = free_port()
    with _uvicorn(server_config(app, settings, "127.0.0.1", port, lifespan="on"), "gateway"):
        yield f"http://127.0.0.1:{port}", app


@contextmanager
def asgi_app(app: Any, host: str = "127.0.0.1") -> Iterator[str]:
    """Run any ASGI app (a callback receiver, say) on `host` in a thread; yield its base URL."""
    port = free_port(host)
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="on")
    with _uvicorn(config, "asgi-app"):
        yield f"http://{host}:{port}"


class MediaHost:
    """Serves files and redirects, and records POSTed callbacks, on a loopback address."""

    def __init__(self, host: str, files: dict[str, Path]) -> None:
        self.files = files
        self.redirects: dict[str, str] = {}
        self.callbacks: list[tuple[dict[str, str], bytes]] = []
        self.fail_callbacks = 0  # answer this many callbacks with 500 first
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                if self.path in outer.redirects:
                    self.send_response(302)
                    self.send_header("Location", outer.redirects[self.path])
                    self.end_headers()
                    return
                f = outer.files.get(self.path)
                if f is None:
                    self.send_error(404)
                    return
                data = f.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.callbacks.append(({k.lower(): v for k, v in self.headers.items()}, body))
                if outer.fail_callbacks > 0:
                    outer.fail_callbacks -= 1
                    self.send_error(500)
                    return
                self.send_response(204)
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer((host, free_port(host)), Handler)
        self.base = f"http://{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_callbacks(self, n: int, timeout: float = 20) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.callbacks) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return [json.loads(b) for _, b in self.callbacks]


class FlakyMediaHost:
    """An HTTP media host on 127.0.0.1 that answers 503 for the first `failures` requests of each path."""

    def __init__(self, root: Path, failures: int, port: int = 0) -> None:
        self.hits: Counter[str] = Counter()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                outer.hits[self.path] += 1
                if outer.hits[self.path] <= failures:
                    self.send_error(503)
                    return
                data = (root / self.path.lstrip("/")).read_bytes()
                self.send_response(200)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
