"""Evidence for reviewers: capture, signed links, a real gateway's pages for jobs, a real Kafka worker's pages
for decisions (with a hostile video id), reposts, tenants, erasure and retention."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import cv2
import httpx
import numpy as np
import pytest
from prometheus_client import REGISTRY, Gauge
from sqlalchemy.exc import OperationalError

from devtools import media_factory as mf
from devtools.kafka_broker import KafkaBroker
from devtools.kafka_tools import (
    Producer,
    Topics,
    create_topics,
    file_uri,
    read_topic,
    running_worker,
    upload_event,
    worker_settings,
)
from devtools.records import new_decision
from devtools.servers import gateway, wait_until
from service.compose import build_backend, build_evidence_keeper
from service.config import Settings
from service.events import parse_flag_event
from service.evidence.capture import EvidenceFor, choose_frames, wants_evidence
from service.evidence.keeper import EvidenceKeeper
from service.evidence.lane import OverlayLane
from service.evidence.links import LinkGrant, sign, signed_url, verify
from service.lanes import LowPriorityLane
from service.pipeline import Pipeline
from service.store import DecisionStore
from service.worker import EventHandler, build_worker

SECRET = "evidence-link-secret-for-tests"
HOSTILE = '<script>alert("x")</script>"><img src=x onerror=alert(1)>'


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _decode(jpeg: bytes) -> np.ndarray:
    picture = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert picture is not None, "not a decodable picture"
    return picture


# --- choosing frames, signing links ----------------------------------------------------------------------


def test_kept_frames_are_the_most_suspicious_spread_over_time() -> None:
    scores: list[float | None] = [0.1] * 32
    scores[10:16] = [0.90, 0.95, 0.97, 0.96, 0.94, 0.93]  # one short peak
    scores[28] = 0.5
    kept = choose_frames(scores, 6)
    assert len(kept) == 6 and kept == sorted(kept)
    assert 12 in kept, "the most suspicious frame is kept"
    assert 28 in kept, "a second, distant peak is kept rather than a sixth neighbour of the first"
    assert min(b - a for a, b in itertools.pairwise(kept)) >= 32 // 6

    plateau: list[float | None] = [0.1] * 60
    plateau[5:35] = [0.9] * 30  # a long suspicious stretch, half the video
    plateau[50] = 0.8  # and a lower peak after it
    kept = choose_frames(plateau, 6)
    assert 50 in kept, "the second peak is not crowded out by the long stretch"
    assert sum(5 <= i < 35 for i in kept) <= 4, "the stretch gets frames about in proportion to its length"
    assert min(b - a for a, b in itertools.pairwise(kept)) >= 5, "relaxed by halves, never to neighbours"

    assert choose_frames([None, None, None, None], 2) == [0, 3], "no face: evenly spaced"
    assert choose_frames([None] * 3, 6) == [0, 1, 2], "no face, fewer frames than asked: all of them"
    assert choose_frames([None] * 4, 6) == [0, 1, 2, 3]
    assert choose_frames([0.2, 0.9], 6) == [0, 1], "never more frames than there are"
    assert choose_frames([0.9, None, 0.2], 2) == [0, 2], "a frame without a face comes last"
    assert choose_frames([], 6) == []


def test_which_decisions_keep_evidence() -> None:
    assert [wants_evidence(d, "review") for d in ("allow", "review", "flag")] == [False, True, True]
    assert [wants_evidence(d, "flag") for d in ("allow", "review", "flag")] == [False, False, True]
    assert all(wants_evidence(d, "all") for d in ("allow", "review", "flag"))
    assert not any(wants_evidence(d, "none") for d in ("allow", "review", "flag"))
    assert EvidenceFor.from_settings(Settings(evidence_for="none")) is None


def test_a_signed_link_opens_one_page_of_one_tenant_until_it_expires() -> None:
    now = time.time()
    grant = LinkGrant("decision", "vid-1", "acme", int(now) + 60)
    sig = sign(SECRET, grant)
    assert verify(SECRET, grant, sig, now)
    assert not verify(SECRET, grant, sig, now + 61), "expired"
    assert not verify("another-secret", grant, sig, now)
    for other in (
        LinkGrant("decision", "vid-2", "acme", grant.expires),
        LinkGrant("decision", "vid-1", "other", grant.expires),
        LinkGrant("job", "vid-1", "acme", grant.expires),
        LinkGrant("decision", "vid-1", "acme", grant.expires + 3600),
    ):
        assert not verify(SECRET, other, sig, now), other
    assert not verify("", grant, sign("", grant), now), "no secret: no links"
    url = signed_url("https://mod.example/", SECRET, LinkGrant("decision", "a/b?c", "acme", grant.expires))
    parts = urlsplit(url)
    assert parts.path == "/v1/decisions/a%2Fb%3Fc/evidence"
    assert parse_qs(parts.query)["tenant"] == ["acme"]


def test_capture_keeps_small_decodable_frames_with_boxes_inside(pipeline: Pipeline, face_clip: Path) -> None:
    how = EvidenceFor("all", frames=4, side=320, quality=80, crop_margin=None)
    scored = pipeline.score_file_with(face_clip, None, how)
    captured = scored.evidence
    assert captured is not None
    assert len(captured.frames) == 4 == len(captured.pictures.frames)
    assert len(captured.series) == scored.result.frames_sampled, "the whole video's score series"
    for frame, jpeg in zip(captured.frames, captured.pictures.frames, strict=True):
        h, w = _decode(jpeg).shape[:2]
        assert (w, h) == (frame.width, frame.height) and max(w, h) == 320
        assert frame.faces, "the face clip shows a face on every frame"
        for face in frame.faces:
            x1, y1, x2, y2 = face.box
            assert 0 <= x1 < x2 <= w + 1 and 0 <= y1 < y2 <= h + 1
    assert captured.crop_refs and len(captured.pictures.crops) == len(captured.crop_refs)
    (name,) = captured.crops_by_model
    assert captured.crops_by_model[name].shape[0] == len(captured.crop_refs)
    plain = pipeline.score_file_with(face_clip, None, EvidenceFor("flag", 4, 320, 80, None))
    assert plain.result.decision != "flag" and plain.evidence is None, "an allowed clip keeps nothing"


def test_retention_with_a_clock_we_control(pipeline: Pipeline, face_clip: Path, tmp_path: Path) -> None:
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    s = Settings(database_url=f"sqlite:///{tmp_path / 'd.sqlite3'}", evidence_retention_seconds=3600)
    store = DecisionStore(s.database_url)
    keeper = EvidenceKeeper(s, lambda: store, None, clock=lambda: now[0])
    try:
        scored = pipeline.score_file_with(face_clip, None, EvidenceFor("all", 3, 320, 80, None))
        assert scored.evidence is not None
        evidence_id = keeper.keep(
            scored.evidence, scored.result, subject="job", subject_id="j1", tenant="acme"
        )
        assert evidence_id is not None
        found = store.get_evidence("acme", "job", "j1", now=now[0])
        assert found is not None and found.document.overlays == "skipped", "no lane: no overlays promised"
        purged = _metric("dfguard_evidence_purged_total", reason="expired")
        now[0] += timedelta(seconds=3599)
        assert keeper.purge() == 0
        assert store.get_evidence("acme", "job", "j1", now=now[0]) is not None
        now[0] += timedelta(seconds=1)
        assert store.get_evidence("acme", "job", "j1", now=now[0]) is None, "expired: hidden before the purge"
        assert keeper.purge() == 1
        assert _metric("dfguard_evidence_purged_total", reason="expired") == purged + 1
        assert keeper.purge() == 0
    finally:
        keeper.close()
        store.close()


def test_a_full_overlay_lane_skips_never_blocks_and_says_so(
    pipeline: Pipeline, face_clip: Path, tmp_path: Path
) -> None:
    """The lane's thread is held in its sink: one capture waits in the queue, the next ones are skipped at
    once and their pages say `skipped`; the held one completes once released. The lane runs at nice 19."""
    s = Settings(database_url=f"sqlite:///{tmp_path / 'd.sqlite3'}", evidence_occlusion_grid=2)
    store = DecisionStore(s.database_url)
    entered, release = threading.Event(), threading.Event()
    keeper: EvidenceKeeper

    def held(*args: Any) -> Any:
        entered.set()
        assert release.wait(60)
        return keeper.store_overlays(*args)

    lane = OverlayLane(build_backend(s, threads=1), held, grid=2, maxsize=1)
    keeper = EvidenceKeeper(s, lambda: store, lane)
    try:
        scored = pipeline.score_file_with(face_clip, None, EvidenceFor("all", 2, 320, 80, None))
        assert scored.evidence is not None
        skipped = _metric("dfguard_evidence_overlays_total", outcome="queue_full")
        ids = []
        for i in range(4):
            started = time.monotonic()
            ids.append(
                keeper.keep(scored.evidence, scored.result, subject="job", subject_id=f"j{i}", tenant="t")
            )
            assert time.monotonic() - started < 5, "keeping never waits for the lane"
            if i == 0:
                assert entered.wait(60)  # the first is on the lane's thread, held
        assert os.getpriority(os.PRIO_PROCESS, lane._lane.native_id or 0) == 19
        states = [store.get_evidence("t", "job", f"j{i}").document.overlays for i in range(4)]  # type: ignore[union-attr]
        assert states == ["pending", "pending", "skipped", "skipped"], states
        assert _metric("dfguard_evidence_overlays_total", outcome="queue_full") == skipped + 2
        release.set()
        wait_until(
            lambda: store.get_evidence("t", "job", "j1").document.overlays == "ready",  # type: ignore[union-attr]
            60,
            what="the queued capture's overlays",
        )
        assert store.get_evidence("t", "job", "j0").document.overlays == "ready"  # type: ignore[union-attr]
    finally:
        release.set()
        keeper.close()
        store.close()


class _RefusingStore(DecisionStore):
    """A real store whose evidence writes fail, as a full disk would: decisions still go in."""

    def put_evidence(self, *args: Any, **kwargs: Any) -> int | None:
        raise OperationalError("INSERT INTO evidence ...", {}, Exception("database or disk is full"))


class _FailingPut(DecisionStore):
    """A real store that refuses decisions (as under a constraint it cannot meet), and takes evidence."""

    def put(self, new: Any) -> Any:
        raise OperationalError("INSERT INTO decisions ...", {}, Exception("database or disk is full"))


def test_the_worker_links_stored_evidence_only_and_overlays_follow_the_flag_event(
    pipeline: Pipeline, face_clip: Path, tmp_path: Path
) -> None:
    media = tmp_path / "media"
    media.mkdir()
    shutil.copy(face_clip, media / "a.mp4")
    shutil.copy(face_clip, media / "b.mp4")
    s = Settings(
        database_url=f"sqlite:///{tmp_path / 'd.sqlite3'}",
        file_uri_root=media,
        evidence_for="all",
        evidence_link_secret=SECRET,
        evidence_occlusion_grid=2,
        dedup_exact=False,
    )
    stop = threading.Event()

    def event(video_id: str, name: str) -> bytes:
        return json.dumps(upload_event(video_id, file_uri(media / name))).encode()

    failing = _FailingPut(s.database_url)
    once = s.model_copy(update={"worker_max_attempts": 1})
    handler = EventHandler(once, pipeline, failing, evidence=EvidenceKeeper(once, lambda: failing, None))
    try:
        dead = handler.handle(event("v-unstored", "a.mp4"), stop)
        assert dead.kind == "dlq" and dead.reason == "store_unavailable"
        assert failing.get_evidence("acme", "decision", "v-unstored") is None, (
            "no capture without its decision"
        )
    finally:
        handler.close()
        failing.close()

    refusing = _RefusingStore(s.database_url)
    handler = EventHandler(s, pipeline, refusing, evidence=EvidenceKeeper(s, lambda: refusing, None))
    try:
        lost = handler.handle(event("v-lost", "a.mp4"), stop)
        assert lost.kind == "flag" and parse_flag_event(lost.value).evidence_url is None, "no link to nothing"
        assert refusing.get("acme", "v-lost") is not None, "the decision stands without its evidence"
    finally:
        handler.close()
        refusing.close()

    store = DecisionStore(s.database_url)
    keeper = build_evidence_keeper(s, lambda: store)
    assert keeper is not None and keeper.lane is not None
    handler = EventHandler(s, pipeline, store, evidence=keeper, owns_evidence=True)
    try:
        kept = handler.handle(event("v-kept", "a.mp4"), stop)
        assert parse_flag_event(kept.value).evidence_url is not None
        found = store.get_evidence("acme", "decision", "v-kept")
        assert found is not None and found.document.overlays == "pending", "nothing before the flag event"
        assert kept.follow_up is not None
        kept.follow_up(True)  # the runner: the flag event was acknowledged
        wait_until(
            lambda: store.get_evidence("acme", "decision", "v-kept").document.overlays == "ready",  # type: ignore[union-attr]
            60,
            what="the overlays after the flag event",
        )
        stopping = handler.handle(event("v-stopping", "b.mp4"), stop)
        assert stopping.follow_up is not None
        stopping.follow_up(False)  # stopping before the flag event was acknowledged
        skipped = store.get_evidence("acme", "decision", "v-stopping")
        assert skipped is not None and skipped.document.overlays == "skipped"
        again = handler.handle(event("v-kept", "a.mp4"), stop)
        assert again.value == kept.value and again.follow_up is None, "a redelivery re-emits, nothing more"
    finally:
        handler.close()
        store.close()


def test_overlays_count_against_the_quota(pipeline: Pipeline, face_clip: Path, tmp_path: Path) -> None:
    """Overlays stored later evict the tenant's oldest evidence like a capture does; never another's."""
    s = Settings(database_url=f"sqlite:///{tmp_path / 'd.sqlite3'}", evidence_occlusion_grid=2)
    store = DecisionStore(s.database_url)
    keeper = EvidenceKeeper(s, lambda: store, None)
    try:
        scored = pipeline.score_file_with(face_clip, None, EvidenceFor("all", 2, 320, 80, None))
        assert scored.evidence is not None
        ids = [
            keeper.keep(scored.evidence, scored.result, subject="job", subject_id=f"j{i}", tenant=t)
            for i, t in enumerate(["acme", "acme", "other"])
        ]
        assert all(ids)
        one = store.get_evidence("acme", "job", "j1")
        assert one is not None
        size = sum(len(b) for b in (*one.pictures.frames, *one.pictures.crops))
        quota = 2 * size + 4096  # room for both captures, not for both and these overlays
        big = [bytes(size // 2)] * 2
        assert store.set_evidence_overlays(ids[1] or 0, "ready", [], big, quota_bytes=quota)
        assert store.get_evidence("acme", "job", "j0") is None, "the tenant's oldest made room"
        assert store.get_evidence("other", "job", "j2") is not None, "never another tenant's"
        assert (store.evidence_bytes()["acme"]) <= quota
        newest = keeper.keep(scored.evidence, scored.result, subject="job", subject_id="j3", tenant="acme")
        assert newest is not None
        huge = [bytes(quota)]  # too large even alone: dropped, and nothing evicted for it
        assert store.set_evidence_overlays(newest, "ready", [], huge, quota_bytes=quota) == "skipped"
        shown = store.get_evidence("acme", "job", "j3")
        assert shown is not None and shown.document.overlays == "skipped" and not shown.pictures.overlays
        assert store.get_evidence("acme", "job", "j1") is not None, "overlays that cannot fit evict nothing"
    finally:
        keeper.close()
        store.close()


def test_a_lane_closing_while_busy_drops_what_it_has_not_taken() -> None:
    """Every item is handled or dropped exactly once, even when the thread outlives `close`'s timeout."""
    handled: list[int] = []
    dropped: list[int] = []
    gauge = Gauge("dfguard_test_lane_depth", "test lane depth")

    def slow(item: int) -> None:
        time.sleep(0.5)
        handled.append(item)

    lane: LowPriorityLane[int] = LowPriorityLane(
        "test-lane", slow, maxsize=8, depth=gauge, dropped=dropped.append
    )
    assert [lane.put(i) for i in range(4)] == ["queued"] * 4
    assert lane.close(0.2) is False, "still busy with the first item"
    assert lane.put(9) == "closed" and lane.close(1.0) is False
    wait_until(lambda: len(handled) + len(dropped) == 4, 10, what="every item handled or dropped")
    time.sleep(0.6)
    assert sorted(handled + dropped) == [0, 1, 2, 3] and len(handled) <= 2, (handled, dropped)
    wait_until(lambda: not lane._thread.is_alive(), 5, what="the lane's thread to end on its stop mark")
    REGISTRY.unregister(gauge)


# --- the gateway: job evidence ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evidence_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    db = f"sqlite:///{tmp_path_factory.mktemp('evidence-gw') / 'decisions.sqlite3'}"
    settings = Settings(
        database_url=db,
        api_keys={"key-a": "acme", "key-b": "globex", "key-r": "acme:read"},
        evidence_for="all",
        evidence_link_secret=SECRET,
        evidence_occlusion_grid=3,
        workers=2,
    )
    with gateway(settings) as (url, app):
        assert app.state.evidence is not None
        yield url, app


def _job(url: str, clip: Path, key: str = "key-a") -> str:
    auth = {"authorization": f"Bearer {key}"}
    with open(clip, "rb") as fh:
        resp = httpx.post(f"{url}/v1/jobs", files={"file": (clip.name, fh)}, headers=auth, timeout=60)
    assert resp.status_code == 202, resp.text
    job_id: str = resp.json()["job_id"]

    def done() -> bool:
        status = httpx.get(f"{url}/v1/jobs/{job_id}", headers=auth).json()["status"]
        assert status != "failed"
        return bool(status == "succeeded")

    wait_until(done, 120, what="the job")
    return job_id


def test_a_job_has_a_page_its_data_and_a_contact_sheet(
    evidence_gateway: tuple[str, Any], face_clip: Path
) -> None:
    url, _ = evidence_gateway
    job_id = _job(url, face_clip)
    auth = {"authorization": "Bearer key-a"}
    page = f"{url}/v1/jobs/{job_id}/evidence"

    def overlays() -> str:
        resp = httpx.get(page, params={"format": "json"}, headers=auth)
        assert resp.status_code == 200, resp.text
        return str(resp.json()["overlays"])

    wait_until(lambda: overlays() == "ready", 120, what="the sensitivity overlays")
    doc = httpx.get(page, params={"format": "json"}, headers=auth).json()
    assert doc["subject"] == "job" and doc["subject_id"] == job_id and doc["tenant"] == "acme"
    assert 1 <= len(doc["frames"]) <= 6 and doc["series"]
    assert doc["sensitivity"] and all(len(m["drop"]) == 3 for m in doc["sensitivity"])
    assert [a["event"] for a in doc["audit"]][:2] == ["decided", "evidence_captured"]
    assert "overlays_ready" in [a["event"] for a in doc["audit"]]

    resp = httpx.get(page, headers=auth)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    csp = resp.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp.replace("default-src", "")
    assert resp.headers["cache-control"] == "private, no-store"
    assert resp.headers["referrer-policy"] == "no-referrer"
    assert job_id in resp.text and "score-plot" in resp.text

    png = httpx.get(page, params={"format": "png"}, headers=auth)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert _decode(png.content).shape[1] >= 640


def test_job_pages_are_the_tenants_own_and_erasable(
    evidence_gateway: tuple[str, Any], face_clip: Path
) -> None:
    url, _ = evidence_gateway
    job_id = _job(url, face_clip)
    page = f"{url}/v1/jobs/{job_id}/evidence"
    assert httpx.get(page).status_code == 401, "no key, no signature"
    other = httpx.get(page, headers={"authorization": "Bearer key-b"})
    assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"
    assert httpx.get(page, headers={"authorization": "Bearer key-r"}).status_code == 200, "readers may look"
    denied = httpx.delete(page, headers={"authorization": "Bearer key-r"})
    assert denied.status_code == 403, "a read-only key may not erase"
    erased = _metric("dfguard_evidence_purged_total", reason="erased")
    assert httpx.delete(page, headers={"authorization": "Bearer key-a"}).status_code == 204
    assert _metric("dfguard_evidence_purged_total", reason="erased") == erased + 1
    assert httpx.get(page, headers={"authorization": "Bearer key-a"}).status_code == 404
    assert httpx.delete(page, headers={"authorization": "Bearer key-a"}).status_code == 404


def test_signed_links_open_without_a_key_and_nothing_else(
    evidence_gateway: tuple[str, Any], face_clip: Path
) -> None:
    url, app = evidence_gateway
    job_id = _job(url, face_clip)
    keeper: EvidenceKeeper = app.state.evidence
    link = keeper.link("job", job_id, "acme", datetime.now(UTC))
    assert link is not None and link.startswith(app.state.settings.public_url)
    parts = urlsplit(link)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    page = f"{url}{parts.path}"
    assert httpx.get(page, params=query).status_code == 200
    assert httpx.get(page, params={**query, "format": "json"}).json()["subject_id"] == job_id
    tampered = {**query, "sig": query["sig"][:-2] + ("AA" if not query["sig"].endswith("AA") else "BB")}
    for params in (
        tampered,
        {**query, "tenant": "globex"},
        {**query, "expires": str(int(query["expires"]) + 1)},
        {k: v for k, v in query.items() if k != "tenant"},
    ):
        resp = httpx.get(page, params=params)
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "unauthorized", params
    other_job = httpx.get(f"{url}/v1/jobs/not-{job_id}/evidence", params=query)
    assert other_job.status_code == 401, "a link opens its own page only"
    past = int(time.time()) - 1
    expired = {**query, "expires": str(past), "sig": sign(SECRET, LinkGrant("job", job_id, "acme", past))}
    assert httpx.get(page, params=expired).status_code == 401


def test_a_hostile_id_and_reason_render_as_text(
    evidence_gateway: tuple[str, Any], pipeline: Pipeline, face_clip: Path
) -> None:
    """Upload events refuse such ids, but the page must not rely on it: stored straight into the gateway's
    store, then read through the real HTTP path."""
    url, app = evidence_gateway
    scored = pipeline.score_file_with(face_clip, None, EvidenceFor("all", 2, 320, 80, None))
    assert scored.evidence is not None
    result = scored.result.model_copy(update={"reasons": [HOSTILE]})
    app.state.store.put(new_decision(HOSTILE))  # a page is shown beside its stored decision only
    keeper: EvidenceKeeper = app.state.evidence
    assert keeper.keep(scored.evidence, result, subject="decision", subject_id=HOSTILE, tenant="acme")
    link = keeper.link("decision", HOSTILE, "acme", datetime.now(UTC))
    assert link is not None
    parts = urlsplit(link)
    resp = httpx.get(f"{url}{parts.path}", params={k: v[0] for k, v in parse_qs(parts.query).items()})
    assert resp.status_code == 200, resp.text
    assert "<script" not in resp.text.lower() and "<img src=x" not in resp.text
    assert resp.text.count("&lt;script&gt;") >= 2, "the id and the reason are shown, as text"


# --- the worker: decision evidence, reposts -----------------------------------------------------------------


@pytest.mark.kafka
def test_worker_decisions_link_their_evidence_and_reposts_show_the_original(
    kafka: KafkaBroker, tmp_path: Path
) -> None:
    media_root = tmp_path / "uploads"
    media_root.mkdir()
    clip = mf.make_face_clip(media_root / "a.mp4", seconds=2.0, width=640, height=360)
    topics = Topics.fresh()
    create_topics(kafka.bootstrap, topics, partitions=1)
    s = worker_settings(
        kafka.bootstrap,
        topics,
        tmp_path,
        media_root,
        evidence_link_secret=SECRET,  # evidence for review and flag decisions: the default
        review_threshold=0.05,  # thresholds this clip is over: a flagged clip, as a moderation queue sees it
        flag_threshold=0.1,
        evidence_occlusion_grid=2,
        api_keys={"key-a": "acme", "key-b": "globex"},
        worker_shutdown_grace_seconds=20,
    )
    uri = file_uri(clip)
    producer = Producer(kafka.bootstrap)
    try:
        with running_worker(build_worker(s)):  # its own pipeline: these thresholds
            producer.send(topics.uploads, upload_event("vid-1", uri))
            (first,) = read_topic(kafka.bootstrap, topics.flags, 1)
            producer.send(topics.uploads, upload_event("repost-1", uri))  # the same bytes, the same tenant
            producer.send(topics.uploads, upload_event("other-1", uri, tenant="globex"))
            flags = read_topic(kafka.bootstrap, topics.flags, 3)
            store = DecisionStore(s.database_url)
            try:
                original = store.get_evidence("acme", "decision", "vid-1")
                assert original is not None
                wait_until(
                    lambda: store.get_evidence("acme", "decision", "vid-1").document.overlays == "ready",  # type: ignore[union-attr]
                    120,
                    what="the worker's overlays",
                )
            finally:
                store.close()
    finally:
        producer.close()
    event = parse_flag_event(first.value)
    assert event.video_id == "vid-1" and event.decision == "flag" and event.evidence_url is not None
    assert json.loads(first.value)["evidence_url"] == event.evidence_url, "in the bytes emitted (schema v2)"
    by_id = {parse_flag_event(r.value).video_id: parse_flag_event(r.value) for r in flags}
    repost_link = by_id["repost-1"].evidence_url
    assert repost_link is not None and urlsplit(repost_link).path == "/v1/decisions/repost-1/evidence"
    assert by_id["other-1"].evidence_url is None, "another tenant's repost links nothing"

    with gateway(s) as (url, _):
        parts = urlsplit(event.evidence_url)
        assert parts.path == "/v1/decisions/vid-1/evidence"
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        page = httpx.get(f"{url}{parts.path}", params=query)
        assert page.status_code == 200, page.text
        assert "vid-1" in page.text

        signed = {k: v[0] for k, v in parse_qs(urlsplit(repost_link).query).items()}
        repost = httpx.get(f"{url}/v1/decisions/repost-1/evidence", params={**signed, "format": "json"})
        assert repost.status_code == 200, repost.text
        shown = repost.json()
        assert shown["subject_id"] == "vid-1" and shown["shown_for"] == "repost-1"
        erase = httpx.delete(
            f"{url}/v1/decisions/repost-1/evidence", headers={"authorization": "Bearer key-a"}
        )
        assert erase.status_code == 404 and "(vid-1)" in erase.json()["error"]["message"]
        other = httpx.get(f"{url}/v1/decisions/other-1/evidence", headers={"authorization": "Bearer key-b"})
        assert other.status_code == 404, "another tenant's repost never shows the original's evidence"
        same_id_other_tenant = httpx.get(
            f"{url}/v1/decisions/repost-1/evidence", headers={"authorization": "Bearer key-b"}
        )
        assert same_id_other_tenant.status_code == 404
