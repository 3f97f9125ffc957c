"""The gateway with a dependency down, on real parts: it starts, says what is down, answers 503 with
Retry-After where the dependency is needed, and recovers without a restart when the dependency comes back.

PostgreSQL: a cluster whose port nobody listens on until the test starts it. Triton: a real server started
only after the gateway is up.
"""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from devtools.postgres_server import PostgresServer
from devtools.servers import gateway, wait_until
from devtools.triton_server import TritonServer
from service.config import Settings
from service.models import DEFAULT_AUDIO_MODEL, UNTRAINED_MANIFEST
from service.store import migrate
from service.triton.repo import RepoOptions, build_repo


def _upload(url: str, path: Path) -> httpx.Response:
    with open(path, "rb") as fh:
        return httpx.post(f"{url}/v1/score", files={"file": (path.name, fh)}, timeout=60)


@pytest.mark.postgres
def test_gateway_starts_with_the_store_down_and_recovers(
    face_clip: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    pg = PostgresServer()  # its port is chosen, its server not started
    try:
        settings = Settings(database_url=pg.url, unavailable_retry_after_seconds=3)
        with gateway(settings) as (url, app):
            ready = httpx.get(f"{url}/readyz")  # still ready: scoring needs no store
            assert ready.status_code == 200 and ready.json()["status"] == "degraded"
            assert ready.json()["dependencies"] == {"backend": "up", "store": "down"}
            assert "decision store unavailable" in ready.json()["detail"]
            got = httpx.get(f"{url}/v1/decisions/vid-1")
            assert got.status_code == 503 and got.json()["error"]["code"] == "store_unavailable"
            assert got.headers["retry-after"] == "3"
            assert _upload(url, face_clip).status_code == 200, "scoring does not need the store"
            pg.start()
            wait_until(lambda: httpx.get(f"{url}/readyz").json()["status"] == "ok", 90, interval=0.2)
            got = httpx.get(f"{url}/v1/decisions/vid-1")
            assert got.status_code == 404 and got.json()["error"]["code"] == "not_found"
            assert migrate.current(app.state.store.engine) == migrate.head(), "migrated once it answered"
    finally:
        pg.close()
    warned = [r for r in caplog.records if r.getMessage() == "decision store unavailable at start-up"]
    assert len(warned) == 1 and "OperationalError" in warned[0].error  # type: ignore[attr-defined]
    assert not [r for r in caplog.records if r.exc_info], "logged, without a traceback"


@pytest.mark.triton
def test_gateway_starts_with_triton_down_and_recovers(
    tmp_path_factory: pytest.TempPathFactory, face_clip: Path, tmp_path: Path
) -> None:
    repo = build_repo(
        [UNTRAINED_MANIFEST],
        tmp_path_factory.mktemp("repo"),
        "cpu",
        RepoOptions(cpu_threads=1),
        audio_path=DEFAULT_AUDIO_MODEL,
    )
    server = TritonServer(repo)  # ports chosen, server not started
    settings = Settings(
        model_paths=[UNTRAINED_MANIFEST],
        backend="triton",
        triton_url=server.grpc_url,
        triton_timeout_seconds=5,
        triton_retries=0,
        triton_breaker_failures=1,
        triton_breaker_reset_seconds=1.0,
        unavailable_retry_after_seconds=2,
        database_url=f"sqlite:///{tmp_path / 'd.sqlite3'}",
    )
    try:
        with gateway(settings) as (url, _):
            ready = httpx.get(f"{url}/readyz")
            assert ready.status_code == 503 and ready.headers["retry-after"] == "2"
            assert ready.json()["dependencies"] == {"backend": "down", "store": "up"}
            resp = _upload(url, face_clip)
            assert resp.status_code == 503 and resp.json()["error"]["code"] == "backend_unavailable"
            assert resp.headers["retry-after"] == "2"
            server.start()
            wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, 90, interval=0.2)
            resp = _upload(url, face_clip)
            assert resp.status_code == 200 and resp.json()["faces_detected"] == 32
    finally:
        server.stop()
