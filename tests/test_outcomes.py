"""The outcomes table without a broker: `classify` is pure and total, docs/worker.md's table is generated from
it, the health monitor holds and resumes on a real probe, and the event handler turns real events into their
documented outcomes on real SQLite and the embedded ONNX Runtime backend (no mocks).
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy.exc import OperationalError

from devtools import media_factory as mf
from devtools.kafka_tools import file_uri, upload_event
from devtools.servers import free_port
from service import errors
from service.config import Settings
from service.errors import (
    ERRORS,
    Action,
    Fault,
    ModerationError,
    classify,
    error_for_code,
    outcome_of,
    outcomes_markdown,
)
from service.events import FlagEvent
from service.pipeline import Pipeline
from service.store import DecisionStore
from service.worker import EventHandler, Health, build_worker
from service.worker.dependencies import LazyStore, kafka_probe
from service.worker.replay import ReplayFilter, replay_headers
from service.worker.server import WorkerServer

REPO = Path(__file__).resolve().parent.parent


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- classify: pure, total, one source ---------------------------------------------------------------------

EXPECTED = {  # class -> (code, HTTP status, fault, worker action, dependency)
    errors.CorruptMedia: ("corrupt_media", 422, Fault.EVENT, Action.REVIEW, None),
    errors.MediaTooLarge: ("media_too_large", 413, Fault.EVENT, Action.REVIEW, None),
    errors.MediaNotFound: ("media_not_found", 404, Fault.EVENT, Action.DEAD_LETTER, None),
    errors.MalformedEvent: ("malformed_event", 400, Fault.EVENT, Action.DEAD_LETTER, None),
    errors.SchemaViolation: ("schema_violation", 400, Fault.EVENT, Action.DEAD_LETTER, None),
    errors.UrlNotAllowed: ("url_not_allowed", 400, Fault.EVENT, Action.DEAD_LETTER, None),
    errors.Unauthorized: ("unauthorized", 401, Fault.EVENT, Action.DEAD_LETTER, None),
    errors.FetchFailed: ("fetch_failed", 422, Fault.EVENT, Action.DEAD_LETTER, None),
    errors.SourceUnavailable: ("fetch_failed", 422, Fault.TRANSIENT, Action.RETRY, None),
    errors.DeadlineExceeded: ("deadline_exceeded", 504, Fault.TRANSIENT, Action.RETRY, None),
    errors.OverCapacity: ("over_capacity", 429, Fault.TRANSIENT, Action.RETRY, None),
    errors.BackendUnavailable: ("backend_unavailable", 503, Fault.DEPENDENCY, Action.HOLD, "inference"),
    errors.StoreUnavailable: ("store_unavailable", 503, Fault.DEPENDENCY, Action.HOLD, "store"),
    errors.InternalError: ("internal_error", 500, Fault.INTERNAL, Action.DEAD_LETTER, None),
}


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda c: c.__name__)
def test_classify_gives_each_class_its_documented_outcome(cls: type[ModerationError]) -> None:
    code, status, fault, action, dependency = EXPECTED[cls]
    outcome = classify(cls("some message"))
    assert (outcome.code, outcome.http_status, outcome.fault, outcome.action, outcome.dependency) == (
        code,
        status,
        fault,
        action,
        dependency,
    )


def test_classify_is_pure_and_total() -> None:
    for cls in ERRORS:
        # The class decides, never the message or the instance.
        assert classify(cls("a")) == classify(cls("completely different")) == outcome_of(cls)
        assert outcome_of(cls).code == cls.code and outcome_of(cls).http_status == cls.http_status
        assert cls.fault is not Fault.DEPENDENCY or cls.dependency is not None, cls
    internal = outcome_of(errors.InternalError)
    for foreign in (KeyError("x"), ValueError("y"), OperationalError("select", {}, Exception("db"))):
        assert classify(foreign) == internal  # anything that is not a dfguard error is a bug
    # An event's own fault is never a 5xx at the gateway; every 5xx is the service's (dependency, bug).
    for cls in ERRORS:
        o = outcome_of(cls)
        assert o.fault is not Fault.EVENT or o.http_status < 500, cls
        assert o.http_status < 500 or o.fault in (Fault.DEPENDENCY, Fault.INTERNAL, Fault.TRANSIENT), cls
    # Every code crosses a process boundary as itself (a shared code as its most general class).
    for cls in ERRORS:
        assert error_for_code(cls.code, "m").code == cls.code
    assert type(error_for_code("fetch_failed", "m")) is errors.FetchFailed
    assert type(error_for_code("no_such_code", "m")) is errors.InternalError


def test_docs_outcomes_table_is_the_generated_one() -> None:
    text = (REPO / "docs" / "worker.md").read_text()
    m = re.search(r"<!-- outcomes:begin[^>]*-->\n(.*?)<!-- outcomes:end -->", text, flags=re.DOTALL)
    assert m, "docs/worker.md lost its outcomes markers"
    assert m.group(1) == outcomes_markdown(), "docs/worker.md is stale: run `python -m service.errors`"
    assert len(outcomes_markdown().splitlines()) == len(ERRORS) + 2


# --- the health monitor on a real probe --------------------------------------------------------------------


def _listen(port: int = 0) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(16)
    return s


def test_health_holds_while_a_probe_fails_and_resumes_when_it_passes() -> None:
    listener = _listen()
    port = listener.getsockname()[1]
    # A long interval: only on-demand rounds and the hold's own backoff probe during this test.
    health = Health(
        [kafka_probe(f"127.0.0.1:{port}", 1.0)], interval=60, timeout=1, backoff=0.05, backoff_max=0.2
    )
    stop = threading.Event()
    try:
        assert health.wait_up(stop) and health.recheck() and not health.held
        assert _metric("dfguard_worker_held_since_timestamp_seconds") == 0
        assert _metric("dfguard_worker_dependency_up", dependency="kafka") == 1
        listener.close()
        assert not health.recheck(), "a fresh round (started after the failure) sees the outage"
        assert health.held and "kafka" in health.down() and health.status() == {"kafka": False}
        since = health.held_since
        assert since is not None and _metric("dfguard_worker_held_since_timestamp_seconds") == since
        assert _metric("dfguard_worker_dependency_up", dependency="kafka") == 0
        assert not health.recheck(), "while held: no forced round, False at once"
        waited: list[bool] = []
        waiter = threading.Thread(target=lambda: waited.append(health.wait_up(stop)))
        waiter.start()
        time.sleep(0.6)  # several backoff rounds, all failing
        assert waiter.is_alive() and health.held_since == since, "one hold, however many rounds"
        listener = _listen(port)
        waiter.join(10)
        assert waited == [True] and not health.held and health.held_since is None
        assert _metric("dfguard_worker_held_since_timestamp_seconds") == 0
        assert _metric("dfguard_worker_dependency_up", dependency="kafka") == 1
        # A stop request ends a wait during a hold.
        listener.close()
        assert not health.recheck()
        stop.set()
        assert health.wait_up(stop) is False
    finally:
        listener.close()
        health.stop()


# --- the event handler on real SQLite and the embedded backend ---------------------------------------------


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory, face_clip: Path) -> Path:
    root = tmp_path_factory.mktemp("outcome-media")
    (root / "a.mp4").write_bytes(face_clip.read_bytes())
    mf.make_random_bytes(root / "corrupt.mp4")
    return root


def _settings(tmp_path: Path, media: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path / 'decisions.sqlite3'}",
        "file_uri_root": media,
        "fetch_allow_hosts": ["127.0.0.1"],
        "worker_max_attempts": 2,
        "worker_retry_backoff_seconds": 0.05,
        "worker_retry_backoff_max_seconds": 0.1,
        "worker_probe_interval_seconds": 60,  # rounds only at start, on demand and while held
        "worker_probe_timeout_seconds": 2,
        "worker_hold_backoff_seconds": 0.05,
        "worker_hold_backoff_max_seconds": 0.2,
    }
    return Settings(**{**base, **kw})


@pytest.fixture
def handler(tmp_path: Path, media: Path, pipeline: Pipeline) -> Iterator[EventHandler]:
    h = EventHandler(_settings(tmp_path, media), pipeline, LazyStore(_settings(tmp_path, media).database_url))
    yield h
    h.close()


def _event(video_id: str, uri: str) -> bytes:
    return json.dumps(upload_event(video_id, uri)).encode()


def test_each_event_gets_its_documented_outcome(handler: EventHandler, media: Path) -> None:
    stop = threading.Event()
    dead_host = f"http://127.0.0.1:{free_port()}/a.mp4"  # nothing listens: a source that keeps failing
    no_tenant = upload_event("v-schema", file_uri(media / "a.mp4"))
    del no_tenant["tenant"]
    cases: list[tuple[bytes | None, type[ModerationError]]] = [
        (b"\xff not json", errors.MalformedEvent),
        (None, errors.MalformedEvent),
        (json.dumps(no_tenant).encode(), errors.SchemaViolation),
        (_event("v-ftp", "ftp://example.com/a.mp4"), errors.InvalidUrl),
        (_event("v-passwd", "file:///etc/passwd"), errors.UrlNotAllowed),
        (_event("v-missing", file_uri(media / "missing.mp4")), errors.MediaNotFound),
        (_event("v-dead-host", dead_host), errors.SourceUnavailable),
    ]
    retries = _metric("dfguard_worker_retries_total", reason="fetch_failed")
    for value, cls in cases:
        emission = handler.handle(value, stop)
        expected = outcome_of(cls)
        headers = dict(emission.headers)
        assert emission.kind == "dlq" and emission.reason == expected.code, (cls, emission)
        assert headers["dfg-error-code"] == expected.code.encode()
        assert headers["dfg-error-fault"] == str(expected.fault).encode()
        assert emission.value == (value or b"")
    # The unreachable source was tried DFG_WORKER_MAX_ATTEMPTS (2) times while every probe was up.
    assert (
        b"after 2 attempts"
        in dict(handler.handle(_event("v-dead-2", dead_host), stop).headers)["dfg-error-message"]
    )
    assert _metric("dfguard_worker_retries_total", reason="fetch_failed") == retries + 4
    assert not handler.health.held

    review = handler.handle(_event("v-corrupt", file_uri(media / "corrupt.mp4")), stop)
    assert review.kind == "flag" and review.decision == "review"
    flag = FlagEvent.model_validate_json(review.value)
    assert (
        flag.reasons == ["unsupported_media"] and outcome_of(errors.UnsupportedMedia).action is Action.REVIEW
    )

    good = handler.handle(_event("v-good", file_uri(media / "a.mp4")), stop)
    assert good.kind == "flag" and good.decision in ("allow", "review", "flag")
    stored = handler.store.get("acme", "v-good")
    assert stored is not None and stored.flag_event_json == good.value
    again = handler.handle(_event("v-good", file_uri(media / "a.mp4")), stop)
    assert again.value == good.value, "a redelivery re-emits the stored decision"


def test_the_worker_starts_holding_while_the_store_is_down_and_decides_once_it_is_up(
    tmp_path: Path, media: Path, pipeline: Pipeline
) -> None:
    """SQLite cannot open a directory: the store is down from the start. The event waits (nothing starts
    during a hold, nothing is dead-lettered, even with one attempt allowed) and is decided once it is up."""
    db = tmp_path / "decisions.sqlite3"
    db.mkdir()
    s = _settings(tmp_path, media, worker_max_attempts=1)
    handler = EventHandler(s, pipeline, LazyStore(s.database_url))
    got: list[Any] = []
    thread = threading.Thread(
        target=lambda: got.append(
            handler.handle(_event("v-late", file_uri(media / "a.mp4")), threading.Event())
        )
    )
    try:
        thread.start()
        deadline = time.monotonic() + 30
        while not handler.health.held:
            assert time.monotonic() < deadline, "the store outage was not detected"
            time.sleep(0.05)
        assert set(handler.health.down()) == {"store"}
        assert _metric("dfguard_worker_dependency_up", dependency="store") == 0
        assert _metric("dfguard_worker_dependency_up", dependency="inference") == 1
        time.sleep(0.5)
        assert thread.is_alive() and not got, "held: the event waits, it is not dead-lettered"
        db.rmdir()  # the database comes up
        thread.join(120)
        assert got and got[0].kind == "flag", got
        assert handler.store.get("acme", "v-late") is not None
        assert not handler.health.held and _metric("dfguard_worker_held_since_timestamp_seconds") == 0
    finally:
        handler.close()


def test_a_failure_during_an_outage_is_not_counted_and_the_event_is_decided_after_it(
    tmp_path: Path, media: Path, pipeline: Pipeline
) -> None:
    """The store goes away between two probe rounds: the event's own store call fails first. The fresh round
    it asks for sees the outage, so the failure is not counted (one attempt allowed, yet no DLQ), and the
    event runs again when the store is back."""
    s = _settings(tmp_path, media, worker_max_attempts=1)
    store = LazyStore(s.database_url)
    handler = EventHandler(s, pipeline, store)
    db = tmp_path / "decisions.sqlite3"
    aside = tmp_path / "decisions.aside"
    try:
        assert handler.health.wait_up(threading.Event())  # first round: all up (and the store open)
        store.get().engine.dispose()  # no pooled connection keeps the file open
        os.rename(db, aside)
        db.mkdir()  # the database file is unreachable: every new connection fails
        retries = _metric("dfguard_worker_retries_total", reason="store_unavailable")
        got: list[Any] = []
        thread = threading.Thread(
            target=lambda: got.append(
                handler.handle(_event("v-mid", file_uri(media / "a.mp4")), threading.Event())
            )
        )
        thread.start()
        deadline = time.monotonic() + 30
        while not handler.health.held:
            assert time.monotonic() < deadline and thread.is_alive(), got
            time.sleep(0.05)
        assert _metric("dfguard_worker_retries_total", reason="store_unavailable") >= retries + 1
        time.sleep(0.5)
        assert thread.is_alive() and not got
        db.rmdir()
        os.rename(aside, db)
        thread.join(120)
        assert got and got[0].kind == "flag", got
        assert DecisionStore(s.database_url).get("acme", "v-mid") is not None
    finally:
        handler.close()


def test_worker_probes_answer_while_kafka_is_unreachable(
    tmp_path: Path, media: Path, pipeline: Pipeline
) -> None:
    """No broker at all: the process is alive (/healthz 200) but not a group member (/readyz 503), and the
    Kafka probe holds it; both answers say which dependency is down."""
    dead = f"127.0.0.1:{free_port()}"
    s = _settings(tmp_path, media, kafka_bootstrap_servers=dead, kafka_request_timeout_ms=1000)
    worker = build_worker(s, pipeline)
    server = WorkerServer(worker, "127.0.0.1", 0)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not worker.health.held:
            assert time.monotonic() < deadline, "the Kafka probe did not fail"
            time.sleep(0.05)
        base = f"http://127.0.0.1:{server.port}"
        health = httpx.get(f"{base}/healthz", timeout=5)
        assert health.status_code == 200 and health.json()["held"] is True
        assert health.json()["dependencies"] == {"inference": True, "store": True, "kafka": False}
        ready = httpx.get(f"{base}/readyz", timeout=5)
        assert ready.status_code == 503 and ready.json()["member"] is False
        metrics = httpx.get(f"{base}/metrics", timeout=5).text
        assert 'dfguard_worker_dependency_up{dependency="kafka"} 0.0' in metrics
        assert httpx.get(f"{base}/nope", timeout=5).status_code == 404
    finally:
        worker.stop()
        thread.join(60)
        server.close()
    assert not thread.is_alive()


def test_replay_selection_and_headers() -> None:
    """Which DLQ records `dfguard dlq replay` selects, by default and by filter (pure)."""
    at = int(datetime(2026, 11, 27, 12, tzinfo=UTC).timestamp() * 1000)

    def h(code: str, fault: str | None) -> dict[str, bytes]:
        headers = {"dfg-error-code": code.encode()}
        if fault is not None:
            headers["dfg-error-fault"] = fault.encode()
        return headers

    default = ReplayFilter()
    assert default.skip_reason(0, 5, at, h("fetch_failed", "transient")) is None
    assert default.skip_reason(0, 5, at, h("store_unavailable", "dependency")) is None
    assert default.skip_reason(0, 5, at, h("fetch_failed", "event")) == "code:fetch_failed"  # a 4xx
    assert default.skip_reason(0, 5, at, h("internal_error", "internal")) == "code:internal_error"
    assert default.skip_reason(0, 5, at, h("malformed_event", "event")) == "code:malformed_event"
    # Records dead-lettered before the fault header: by the codes of the transient/dependency classes.
    assert default.skip_reason(0, 5, at, h("backend_unavailable", None)) is None
    assert default.skip_reason(0, 5, at, h("schema_violation", None)) == "code:schema_violation"
    chosen = ReplayFilter.from_args(
        codes=["internal_error"],
        since="2026-11-27T11:00:00",  # naive: UTC
        until="2026-11-27T13:00:00+00:00",
        partition=1,
        from_offset=10,
        to_offset=20,
    )
    assert chosen.skip_reason(1, 10, at, h("internal_error", "internal")) is None
    assert chosen.skip_reason(1, 10, at, h("fetch_failed", "transient")) == "code:fetch_failed"
    assert chosen.skip_reason(0, 10, at, h("internal_error", "internal")) == "partition"
    assert chosen.skip_reason(1, 21, at, h("internal_error", "internal")) == "offset_range"
    assert chosen.skip_reason(1, 9, at, h("internal_error", "internal")) == "offset_range"
    late = at + 2 * 3600 * 1000
    assert chosen.skip_reason(1, 10, late, h("internal_error", "internal")) == "time_window"
    original = [("origin", b"x"), ("dfg-error-code", b"c"), ("dfg-replay-count", b"1"), ("trace_id", b"t")]
    assert replay_headers(original, 1) == [("origin", b"x"), ("trace_id", b"t"), ("dfg-replay-count", b"2")]
