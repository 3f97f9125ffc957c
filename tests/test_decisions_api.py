"""`GET /v1/decisions/{video_id}` on a real gateway: stored decisions, tenant-scoped, typed errors."""

from __future__ import annotations

from pathlib import Path

import httpx

from devtools.records import new_decision as _new
from devtools.servers import gateway
from service.config import Settings
from service.store import DecisionStore


def test_decisions_are_read_per_tenant(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'decisions.sqlite3'}"
    store = DecisionStore(url)
    store.put(_new("vid-9", tenant="acme", decision="flag"))
    store.put(_new("vid-9", tenant="globex", decision="allow"))
    settings = Settings(database_url=url, api_keys={"key-acme": "acme", "key-globex": "globex:read"})
    with gateway(settings) as (base, _):
        acme = httpx.get(f"{base}/v1/decisions/vid-9", headers={"authorization": "Bearer key-acme"})
        globex = httpx.get(f"{base}/v1/decisions/vid-9", headers={"authorization": "Bearer key-globex"})
        missing = httpx.get(f"{base}/v1/decisions/nope", headers={"authorization": "Bearer key-acme"})
        anonymous = httpx.get(f"{base}/v1/decisions/vid-9")
    assert acme.status_code == 200 and acme.json()["decision"] == "flag"
    body = acme.json()
    assert body["origin"] == "scored" and body["thresholds"] == {
        "review": 0.5,
        "flag": 0.8,
        "source": "default",
    }
    assert body["source_event_id"] == "ev-1" and body["model"] == {"name": "m", "version": "1"}
    assert globex.status_code == 200 and globex.json()["decision"] == "allow", "read-only keys may read"
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthorized"


def test_a_video_id_with_slashes_is_found(tmp_path: Path) -> None:
    """The upload schema allows `/` in video ids (`user/42/clip`); clients send it percent-encoded."""
    url = f"sqlite:///{tmp_path / 'decisions.sqlite3'}"
    DecisionStore(url).put(_new("user/42/clip", tenant="default", decision="review"))
    with gateway(Settings(database_url=url)) as (base, _):
        found = httpx.get(f"{base}/v1/decisions/user%2F42%2Fclip")
        plain = httpx.get(f"{base}/v1/decisions/user/42/clip")
        evidence = httpx.get(f"{base}/v1/decisions/user%2F42%2Fclip/evidence")
    assert found.status_code == 200 and found.json()["video_id"] == "user/42/clip"
    assert plain.status_code == 200 and plain.json()["video_id"] == "user/42/clip"
    assert (
        evidence.status_code == 404
        and "no evidence for video user/42/clip" in evidence.json()["error"]["message"]
    )


def test_an_unreachable_store_is_a_503_not_a_crash(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'decisions.sqlite3'}"
    with gateway(Settings(database_url=url)) as (base, app):
        app.state.store.engine.dispose()
        (tmp_path / "decisions.sqlite3").unlink()
        (tmp_path / "decisions.sqlite3").mkdir()  # the database file is gone and cannot be recreated
        r = httpx.get(f"{base}/v1/decisions/x")
        health = httpx.get(f"{base}/healthz")
        ready = httpx.get(f"{base}/readyz")
    assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"
    assert int(r.headers["retry-after"]) >= 1
    assert health.status_code == 200
    # Still ready (scoring needs no store), but the store's outage is reported.
    assert ready.status_code == 200 and ready.json()["status"] == "degraded"
    assert ready.json()["dependencies"] == {"backend": "up", "store": "down"}
    assert "decision store" in ready.json()["detail"]
