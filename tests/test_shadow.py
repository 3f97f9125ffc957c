"""Shadow scoring: the arm, the bounded lane, and shadow rows from a real gateway and a real Kafka worker."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import random
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client import REGISTRY
from sqlalchemy import select
from sqlalchemy.orm import Session

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
from devtools.servers import gateway, wait_until
from service.compose import build_backend, build_shadow_lane, choose_shadow
from service.config import Settings
from service.decision import Thresholds
from service.media import file_sha256
from service.pipeline import CutCrops, Pipeline
from service.schemas import ModelRef
from service.shadow import ShadowLane, ShadowModels, ShadowSubject, ShadowVerdict, ShadowWork, in_shadow_arm
from service.store import DecisionStore
from service.store.tables import DecisionRow, ShadowRow
from service.worker import build_worker

_START_NICE = os.getpriority(os.PRIO_PROCESS, 0)  # the test process's, before any lane started

REPO = Path(__file__).resolve().parent.parent
SHADOW = REPO / "service/models/builtin/untrained-mini/model.json"  # a second, different ensemble
SHADOW_NAME = "dfguard-untrained-mini"
DECISIONS = ("allow", "review", "flag")


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _decided_after(primary: str) -> float:
    return sum(_metric("dfguard_shadow_decisions_total", primary=primary, shadow=d) for d in DECISIONS)


def _rows(url: str) -> list[ShadowRow]:
    store = DecisionStore(url)
    try:
        with Session(store.engine) as s:
            return list(s.scalars(select(ShadowRow).order_by(ShadowRow.id)))
    finally:
        store.close()


def _hashes(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [hashlib.sha256(rng.randbytes(32)).hexdigest() for _ in range(n)]


# --- the arm ---------------------------------------------------------------------------------------------


def test_arm_is_a_deterministic_share_of_the_digests() -> None:
    digests = _hashes(2000)
    arm = [d for d in digests if in_shadow_arm(d, 0.1)]
    assert 150 <= len(arm) <= 250, len(arm)  # binomial(2000, 0.1): 200 +- 3.7 standard deviations
    assert arm == [d for d in digests if in_shadow_arm(d, 0.1)], "a repost lands in the same arm"
    assert set(d for d in digests if in_shadow_arm(d, 0.05)) < set(arm), "a larger sample only adds media"
    assert not any(in_shadow_arm(d, 0.0) for d in digests)
    assert all(in_shadow_arm(d, 1.0) for d in digests)
    assert in_shadow_arm("0" * 64, 0.001) and not in_shadow_arm("f" * 64, 0.999)


def _shadow_models(sample: float) -> ShadowModels:
    s = Settings(shadow_model_paths=[SHADOW], shadow_sample=sample)
    models = choose_shadow(s)
    assert models is not None
    backend = build_backend(s, models, threads=1)
    try:
        return ShadowModels(backend.models, models.ensemble, sample)
    finally:
        backend.close()


def test_zero_sample_cuts_nothing_and_builds_no_lane(pipeline: Pipeline, face_clip: Path) -> None:
    assert build_shadow_lane(Settings(shadow_model_paths=[SHADOW], shadow_sample=0.0), lambda v: None) is None
    assert build_shadow_lane(Settings(), lambda v: None) is None  # no shadow configured
    never = _shadow_models(0.0)
    scored = pipeline.score_file_with(face_clip, never.models_for)
    assert scored.extra is None and scored.result.crops_scored > 0


def test_shadow_crops_come_from_the_faces_the_primary_classified(pipeline: Pipeline, face_clip: Path) -> None:
    shadow = _shadow_models(1.0)
    plain = pipeline.score_file(face_clip)
    result, cut, _ = pipeline.score_file_with(face_clip, shadow.models_for)
    assert cut is not None and set(cut.crops_by_model) == {SHADOW_NAME}
    crops = cut.crops_by_model[SHADOW_NAME]
    assert crops.shape == (plain.crops_scored, 224, 224, 3) and crops.dtype == np.uint8 and crops.any()
    assert len(cut.crop_frames) == plain.crops_scored and not cut.partial
    assert result.model_dump(exclude={"timings_ms"}) == plain.model_dump(exclude={"timings_ms"})


# --- the lane ---------------------------------------------------------------------------------------------


def _work(crops: int = 3, size: int = 224) -> ShadowWork:
    rng = np.random.default_rng(crops)
    cut = CutCrops(
        {SHADOW_NAME: rng.integers(0, 256, (crops, size, size, 3), dtype=np.uint8)}, [0] * crops, False
    )
    subject = ShadowSubject(
        source="gateway",
        tenant="acme",
        sha256="ab" * 32,
        video_id=None,
        decision_id=None,
        primary_model=ModelRef(name="primary", version="1"),
        primary_score=0.5,
        primary_decision="allow",
    )
    return ShadowWork(subject, cut)


@pytest.fixture
def blocked_lane() -> Iterator[tuple[ShadowLane, list[ShadowVerdict], threading.Event, threading.Event]]:
    """A real lane (the bundled untrained model on ONNX Runtime) whose sink waits for `release`."""
    s = Settings(shadow_model_paths=[SHADOW], shadow_sample=1.0, shadow_queue=1)
    stored: list[ShadowVerdict] = []
    entered, release = threading.Event(), threading.Event()

    def sink(verdict: ShadowVerdict) -> None:
        entered.set()
        assert release.wait(30)
        if verdict.subject.tenant == "broken-store":
            raise ConnectionError("the store is down")
        stored.append(verdict)

    lane = build_shadow_lane(s, sink)
    assert lane is not None
    yield lane, stored, entered, release
    release.set()
    lane.close(timeout=30)


def test_a_full_lane_skips_and_counts_never_blocks(
    blocked_lane: tuple[ShadowLane, list[ShadowVerdict], threading.Event, threading.Event],
) -> None:
    lane, stored, entered, release = blocked_lane
    full = _metric("dfguard_shadow_skipped_total", reason="queue_full")
    decided = _decided_after("allow")
    assert lane.offer(_work())  # taken by the lane's thread, which then waits in the sink
    assert entered.wait(30)
    assert lane.offer(_work())  # the one place in the queue
    assert _metric("dfguard_shadow_queue_depth") == 1
    assert not lane.offer(_work()), "a full queue refuses at once"
    assert not lane.offer(_work())
    assert _metric("dfguard_shadow_skipped_total", reason="queue_full") == full + 2
    release.set()
    wait_until(lambda: len(stored) == 2, 30, what="the two accepted items stored")
    v = stored[0]
    assert v.model == ModelRef(name=SHADOW_NAME, version="0.0.0-untrained")
    assert v.thresholds == Thresholds() and v.score is not None and 0.0 <= v.score <= 1.0
    assert v.decision in ("allow", "review", "flag")
    wait_until(lambda: _decided_after("allow") == decided + 2, 10, what="each stored verdict counted once")


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are a Linux feature")
def test_the_lane_scores_at_the_lowest_cpu_priority(
    blocked_lane: tuple[ShadowLane, list[ShadowVerdict], threading.Event, threading.Event],
) -> None:
    lane, _, entered, release = blocked_lane
    assert lane.offer(_work())
    assert entered.wait(30)  # the lane's thread is running (and has set its priority before taking work)
    tid = lane._lane.native_id
    assert tid is not None
    assert os.getpriority(os.PRIO_PROCESS, tid) == 19, "the shadow only takes CPU the primary leaves idle"
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert mine == _START_NICE, "per thread: the rest of the process keeps its priority"
    release.set()


def test_offers_racing_close_are_all_scored_or_counted() -> None:
    """Executor threads still scoring when the lane closes: each offer is either scored, or refused and
    counted (`shutdown`, `queue_full`); none is queued behind the stop mark and lost unseen."""
    stored: list[ShadowVerdict] = []
    lane = build_shadow_lane(
        Settings(shadow_model_paths=[SHADOW], shadow_sample=1.0, shadow_queue=4), stored.append
    )
    assert lane is not None
    before = {r: _metric("dfguard_shadow_skipped_total", reason=r) for r in ("shutdown", "queue_full")}
    accepted: list[bool] = []
    go = threading.Event()

    def offer_many() -> None:
        go.wait(10)
        accepted.extend(lane.offer(_work(crops=1)) for _ in range(25))

    threads = [threading.Thread(target=offer_many) for _ in range(4)]
    for t in threads:
        t.start()
    go.set()
    lane.close(timeout=60)
    for t in threads:
        t.join(30)
    assert len(accepted) == 100
    refused = sum(_metric("dfguard_shadow_skipped_total", reason=r) - before[r] for r in before)
    assert len(stored) == sum(accepted), "every accepted offer was scored before the lane stopped"
    assert refused == 100 - sum(accepted), "every refused offer was counted"
    shut = _metric("dfguard_shadow_skipped_total", reason="shutdown")
    assert not lane.offer(_work())
    assert _metric("dfguard_shadow_skipped_total", reason="shutdown") == shut + 1


def test_failures_stay_in_the_lane(
    blocked_lane: tuple[ShadowLane, list[ShadowVerdict], threading.Event, threading.Event],
) -> None:
    lane, stored, _, release = blocked_lane
    release.set()
    failed = _metric("dfguard_shadow_skipped_total", reason="failed")
    down = _metric("dfguard_shadow_skipped_total", reason="store_unavailable")
    no_faces = _metric("dfguard_shadow_skipped_total", reason="no_faces_cut")
    assert lane.offer(_work(size=100))  # not the model's input size: ONNX Runtime refuses it
    wait_until(lambda: _metric("dfguard_shadow_skipped_total", reason="failed") == failed + 1, 30)
    broken = _work()
    assert lane.offer(ShadowWork(dataclasses.replace(broken.subject, tenant="broken-store"), broken.crops))
    wait_until(lambda: _metric("dfguard_shadow_skipped_total", reason="store_unavailable") == down + 1, 30)
    assert not lane.offer(_work(crops=0))  # nothing to score: both arms would allow without looking
    assert _metric("dfguard_shadow_skipped_total", reason="no_faces_cut") == no_faces + 1
    assert lane.offer(_work())
    wait_until(lambda: len(stored) == 1, 30, what="the lane still scoring after its failures")
    lane.close(timeout=30)
    assert not lane.offer(_work()) and not lane.models_for("00" * 32)


def test_the_shadow_keeps_the_primarys_speech_verdict() -> None:
    """The shadow swaps face models only: its decision is the stricter of its faces' and the primary's speech,
    so a clip flagged for its cloned voice is not counted as a change the face candidate would make."""
    stored: list[ShadowVerdict] = []
    lane = build_shadow_lane(Settings(shadow_model_paths=[SHADOW], shadow_sample=1.0), stored.append)
    assert lane is not None
    grey = CutCrops({SHADOW_NAME: np.full((2, 224, 224, 3), 64, dtype=np.uint8)}, [0, 0], False)
    plain = ShadowWork(_work().subject, grey)  # the untrained model scores these 0.57: review
    voiced = ShadowWork(
        dataclasses.replace(
            plain.subject, primary_decision="flag", audio=("flag", ["synthetic_speech_suspected"])
        ),
        plain.crops,
    )
    try:
        assert lane.offer(plain) and lane.offer(voiced)
        wait_until(lambda: len(stored) == 2, 30, what="both shadow verdicts")
    finally:
        lane.close(timeout=30)
    faces_only, with_speech = stored
    assert faces_only.decision == "review"
    assert with_speech.decision == "flag" and with_speech.score == faces_only.score


# --- the gateway ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shadow_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Any]]:
    db = f"sqlite:///{tmp_path_factory.mktemp('shadow-gw') / 'decisions.sqlite3'}"
    settings = Settings(
        database_url=db,
        shadow_model_paths=[SHADOW],
        shadow_sample=1.0,
        shadow_queue=1,
        api_keys={"key-a": "acme"},
        workers=2,
    )
    with gateway(settings) as (url, app):
        assert app.state.shadow is not None
        yield url, db, app


def test_gateway_score_stores_a_shadow_row_after_answering(
    shadow_gateway: tuple[str, str, Any], face_clip: Path
) -> None:
    url, db, _ = shadow_gateway
    before = len(_rows(db))
    diffs = _metric("dfguard_shadow_score_difference_count")
    with open(face_clip, "rb") as fh:
        resp = httpx.post(
            f"{url}/v1/score",
            files={"file": (face_clip.name, fh)},
            headers={"authorization": "Bearer key-a"},
            timeout=120,
        )
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["model"]["name"] == "dfguard-default", "the answer is the primary's"
    wait_until(lambda: len(_rows(db)) > before, 60, what="the shadow row")
    row = _rows(db)[-1]
    assert (row.source, row.tenant, row.video_id, row.decision_id) == ("gateway", "acme", None, None)
    assert row.sha256 == doc["media"]["sha256"] == file_sha256(face_clip)
    assert (row.primary_model_name, row.primary_model_version) == (
        doc["model"]["name"],
        doc["model"]["version"],
    )
    assert row.primary_decision == doc["decision"] and row.primary_score == pytest.approx(doc["score"])
    assert (row.shadow_model_name, row.shadow_model_version) == (SHADOW_NAME, "0.0.0-untrained")
    assert row.shadow_decision in ("allow", "review", "flag") and row.shadow_score is not None
    assert (row.shadow_review_threshold, row.shadow_flag_threshold) == (
        Thresholds().review,
        Thresholds().flag,
    )
    assert row.created_at is not None
    assert _metric("dfguard_shadow_score_difference_count") == diffs + 1
    exposed = httpx.get(f"{url}/metrics").text
    line = f'dfguard_shadow_decisions_total{{primary="{doc["decision"]}",shadow="{row.shadow_decision}"}}'
    assert line in exposed


def test_gateway_job_shadow_row_names_the_job(shadow_gateway: tuple[str, str, Any], face_clip: Path) -> None:
    url, db, _ = shadow_gateway
    auth = {"authorization": "Bearer key-a"}
    with open(face_clip, "rb") as fh:
        resp = httpx.post(f"{url}/v1/jobs", files={"file": (face_clip.name, fh)}, headers=auth, timeout=60)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job_id"]

    def done() -> Any:
        return httpx.get(f"{url}/v1/jobs/{job_id}", headers=auth).json()["status"] == "succeeded"

    wait_until(done, 120, what="the job")
    wait_until(lambda: any(r.video_id == job_id for r in _rows(db)), 60, what="the job's shadow row")
    row = next(r for r in _rows(db) if r.video_id == job_id)
    assert row.source == "gateway" and row.tenant == "acme" and row.decision_id is None


def _blocking(sink: Any, entered: threading.Event, release: threading.Event) -> Any:
    """`sink`, once `release` is set: the lane's thread waits in it, as behind a very slow shadow."""

    def blocked(verdict: ShadowVerdict) -> object:
        entered.set()
        assert release.wait(120)
        return sink(verdict)

    return blocked


def test_a_stuck_shadow_never_holds_up_the_gateway(
    shadow_gateway: tuple[str, str, Any], face_clip: Path
) -> None:
    """With the lane stuck in its sink, `/v1/score` still answers, and media past DFG_SHADOW_QUEUE (1) are
    skipped and counted: were the shadow scored on the request's path, the first request would hang."""
    url, db, app = shadow_gateway
    lane: ShadowLane = app.state.shadow
    before = len(_rows(db))
    full = _metric("dfguard_shadow_skipped_total", reason="queue_full")
    entered, release = threading.Event(), threading.Event()
    original = lane.sink
    lane.sink = _blocking(original, entered, release)
    try:
        for i in range(4):
            with open(face_clip, "rb") as fh:
                resp = httpx.post(
                    f"{url}/v1/score",
                    files={"file": (face_clip.name, fh)},
                    headers={"authorization": "Bearer key-a"},
                    timeout=120,
                )
            assert resp.status_code == 200, resp.text
            if i == 0:
                assert entered.wait(60), "the lane took the first medium and is stuck in its sink"
        # The first medium is in the sink, the second holds the one place in the queue, two were skipped.
        assert _metric("dfguard_shadow_skipped_total", reason="queue_full") == full + 2
        assert _metric("dfguard_shadow_queue_depth") == 1
        assert len(_rows(db)) == before, "nothing stored while the lane is stuck"
    finally:
        release.set()
        lane.sink = original
    wait_until(lambda: len(_rows(db)) == before + 2, 60, what="the two accepted media stored")


def test_a_request_past_its_deadline_offers_nothing(
    pipeline: Pipeline, face_clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 504 delivered no primary decision: its medium is not shadowed, although its scoring finished."""
    from service.api.scoring import ScoringService
    from service.errors import DeadlineExceeded

    cut: list[bool] = []
    score_file_with = pipeline.score_file_with

    def scored(path: Path, extra: Any, *rest: Any) -> Any:
        got = score_file_with(path, extra, *rest)
        cut.append(got.extra is not None)
        return got

    monkeypatch.setattr(pipeline, "score_file_with", scored)
    stored: list[ShadowVerdict] = []
    s = Settings(shadow_model_paths=[SHADOW], shadow_sample=1.0, workers=1)
    lane = build_shadow_lane(s, stored.append)
    assert lane is not None
    service = ScoringService(s, pipeline, lane)

    async def score(seconds: float) -> None:
        loop = asyncio.get_running_loop()
        await service.score(face_clip, loop.time() + seconds, "acme")

    try:
        with pytest.raises(DeadlineExceeded):
            asyncio.run(score(0.05))  # a slot at once, then far less than the clip takes
        service.executor.shutdown(wait=True)  # the timed-out scoring ran to its end
        assert cut == [True], "the medium was scored and its shadow crops cut"
        lane.close(timeout=30)
        assert stored == []
    finally:
        service.close()
        lane.close(timeout=30)
    lane = build_shadow_lane(s, stored.append)
    assert lane is not None
    service = ScoringService(s, pipeline, lane)
    try:
        asyncio.run(score(120))  # answered in time: shadowed
        wait_until(lambda: len(stored) == 1, 60, what="the answered medium's shadow verdict")
    finally:
        service.close()
        lane.close(timeout=30)


# --- the worker -------------------------------------------------------------------------------------------


@pytest.mark.kafka
def test_worker_stores_shadow_rows_beside_decisions_and_emits_nothing_more(
    kafka: KafkaBroker, pipeline: Pipeline, tmp_path: Path
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
        shadow_model_paths=[SHADOW],
        shadow_sample=1.0,
        worker_shutdown_grace_seconds=20,
    )
    uri = file_uri(clip)
    producer = Producer(kafka.bootstrap)
    try:
        with running_worker(build_worker(s, pipeline)):
            producer.send(topics.uploads, upload_event("vid-1", uri))
            assert len(read_topic(kafka.bootstrap, topics.flags, 1)) == 1
            wait_until(lambda: len(_rows(s.database_url)) == 1, 60, what="the worker's shadow row")
            producer.send(topics.uploads, upload_event("vid-2", uri))  # a repost: reused, not scored
            assert len(read_topic(kafka.bootstrap, topics.flags, 2)) == 2
    finally:
        producer.close()
    assert len(read_topic(kafka.bootstrap, topics.flags, 3, timeout=3)) == 2, "the shadow is never emitted"
    rows = _rows(s.database_url)
    assert len(rows) == 1, "only scored media are shadowed, not reposts"
    store = DecisionStore(s.database_url)
    try:
        stored = store.get("acme", "vid-1")
        with Session(store.engine) as session:
            uris = dict(session.execute(select(DecisionRow.video_id, DecisionRow.source_uri)).all())
    finally:
        store.close()
    assert stored is not None and stored.record.origin == "scored"
    row = rows[0]
    assert (row.source, row.tenant, row.video_id, row.decision_id) == ("worker", "acme", "vid-1", stored.id)
    assert row.sha256 == stored.record.sha256 == file_sha256(clip)
    assert row.primary_decision == stored.record.decision and row.primary_score == stored.record.score
    assert row.primary_model_name == stored.record.model.name and row.shadow_model_name == SHADOW_NAME
    assert uris == {"vid-1": uri, "vid-2": uri}, "every worker decision records where its media came from"


@pytest.mark.kafka
def test_a_stuck_shadow_never_holds_up_the_worker(
    kafka: KafkaBroker, pipeline: Pipeline, tmp_path: Path
) -> None:
    """Flag events keep arriving on the real topic while the worker's shadow lane is stuck in its sink, and
    media past DFG_SHADOW_QUEUE (1) are skipped and counted."""
    media_root = tmp_path / "uploads"
    media_root.mkdir()
    photo = Image.fromarray(mf.face_photos()["grace_hopper"])
    uris = []
    for quality in (95, 90, 85):  # three different media: reposts are not shadowed
        path = media_root / f"hopper-{quality}.jpg"
        photo.save(path, quality=quality)
        uris.append(file_uri(path))
    topics = Topics.fresh()
    create_topics(kafka.bootstrap, topics, partitions=1)
    s = worker_settings(
        kafka.bootstrap,
        topics,
        tmp_path,
        media_root,
        shadow_model_paths=[SHADOW],
        shadow_sample=1.0,
        shadow_queue=1,
    )
    stored: list[ShadowVerdict] = []
    entered, release = threading.Event(), threading.Event()
    lane = build_shadow_lane(s, _blocking(stored.append, entered, release))  # as `serve --with-worker` shares
    assert lane is not None
    full = _metric("dfguard_shadow_skipped_total", reason="queue_full")
    producer = Producer(kafka.bootstrap)
    try:
        with running_worker(build_worker(s, pipeline, shadow=lane)):
            producer.send(topics.uploads, upload_event("vid-1", uris[0]))
            assert len(read_topic(kafka.bootstrap, topics.flags, 1)) == 1
            assert entered.wait(60), "the lane took the first medium and is stuck in its sink"
            producer.send(topics.uploads, upload_event("vid-2", uris[1]))
            producer.send(topics.uploads, upload_event("vid-3", uris[2]))
            assert len(read_topic(kafka.bootstrap, topics.flags, 3)) == 3, (
                "flags go out while the lane is stuck"
            )
            assert not release.is_set() and not stored
            assert _metric("dfguard_shadow_skipped_total", reason="queue_full") == full + 1
            release.set()
            wait_until(lambda: len(stored) == 2, 60, what="the two accepted media scored")
    finally:
        release.set()
        producer.close()
        lane.close(timeout=30)
    assert {v.subject.video_id for v in stored} < {"vid-1", "vid-2", "vid-3"}
    assert all(v.subject.source == "worker" for v in stored)
