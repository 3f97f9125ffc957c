"""`dfguard rescore` on a real Kafka broker and real media: revisions emitted, a crash mid-run, redelivery.

Thresholds decide the flips deterministically: the first decisions are taken at review = flag = 0 (every
scored face is `flag`), the re-score at review = flag = 1 (every scored face is `allow`); a clip without a
face is `allow` either way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from devtools import media_factory as mf
from devtools.kafka_broker import KafkaBroker
from devtools.kafka_tools import (
    Producer,
    Topics,
    create_topics,
    file_uri,
    read_to_end,
    read_topic,
    running_worker,
    upload_event,
    worker_settings,
)
from devtools.records import new_decision
from service import cli, compose, rescore
from service.config import Settings
from service.events import FlagTimings, flag_event_id, parse_flag_event
from service.metrics import REVISIONS_PENDING
from service.pipeline import Pipeline
from service.schemas import UsedThresholds
from service.store import DecisionStore, NewDecision
from service.store.revisions import Redecision
from service.worker import build_worker

pytestmark = pytest.mark.kafka
SCHEMAS = Path(__file__).resolve().parent.parent / "docs" / "schemas"
_FLAG_ALL = {"review_threshold": 0.0, "flag_threshold": 0.0}
_ALLOW_ALL = {"DFG_REVIEW_THRESHOLD": "1.0", "DFG_FLAG_THRESHOLD": "1.0"}


@pytest.fixture(scope="module")
def media_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rescore-media")
    mf.make_face_clip(root / "a.mp4", seconds=2.0, width=640, height=360)
    shutil.copyfile(root / "a.mp4", root / "a_copy.mp4")  # an exact repost
    mf.make_face_clip(root / "a_reencoded.mp4", seconds=2.0, width=480, height=270, crf=34)  # a near one
    mf.make_face_clip(root / "b.mp4", seconds=2.0, width=640, height=360, photo="grace_hopper")
    mf.make_face_free_clip(root / "c.mp4", seconds=2.0, width=640, height=360)
    return root


def _pipeline(pipeline: Pipeline, s: Settings) -> Pipeline:
    """The session's loaded models under `s`'s thresholds (no second model load)."""
    return Pipeline(s, pipeline.detector, pipeline.backend, pipeline.ensemble)


def _rescore(
    kafka: KafkaBroker, topics: Topics, s: Settings, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """`dfguard rescore --json ...` as an operator runs it: a process of its own, settings from the env."""
    full = {
        **os.environ,
        **topics.env(),
        "DFG_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
        "DFG_DATABASE_URL": s.database_url,
        "DFG_FILE_URI_ROOT": str(s.file_uri_root),
        **_ALLOW_ALL,
        **(env or {}),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "rescore", "--json", *args],
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _on_fresh_topics(
    kafka: KafkaBroker, tmp_path: Path, media_root: Path, **overrides: Any
) -> tuple[Topics, Settings, DecisionStore]:
    """New topics on the broker, the worker's settings for them, and the store those settings name."""
    topics = Topics.fresh()
    create_topics(kafka.bootstrap, topics, partitions=1)
    s = worker_settings(kafka.bootstrap, topics, tmp_path, media_root, **overrides)
    return topics, s, DecisionStore(s.database_url)


def _report(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-4000:]
    report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return report


def _revisions(topic_records: list[Any]) -> dict[str, list[Any]]:
    by_video: defaultdict[str, list[Any]] = defaultdict(list)
    for r in topic_records:
        by_video[parse_flag_event(r.value).video_id].append(r)
    return by_video


def test_rescore_emits_revisions_that_reposts_redelivery_and_the_near_duplicate_index_follow(
    kafka: KafkaBroker, pipeline: Pipeline, media_root: Path, tmp_path: Path
) -> None:
    topics, s, store = _on_fresh_topics(kafka, tmp_path, media_root, **_FLAG_ALL)
    legacy = new_decision("legacy", decision="flag", sha=None)  # stored before source URIs were kept
    store.put(legacy)
    events = {
        v: upload_event(v, file_uri(media_root / name))
        for v, name in [("a", "a.mp4"), ("copy", "a_copy.mp4"), ("b", "b.mp4"), ("c", "c.mp4")]
    }
    gone = mf.make_face_free_clip(media_root / "gone.mp4", seconds=1.0, width=320, height=180)
    events["gone"] = upload_event("gone", file_uri(gone))
    producer = Producer(kafka.bootstrap)
    worker = build_worker(s, _pipeline(pipeline, s), store)
    try:
        with running_worker(worker):
            producer.send(topics.uploads, events["a"])  # first: the others' exact repost reuses it
            read_topic(kafka.bootstrap, topics.flags, 1)
            for v in ("copy", "b", "c", "gone"):
                producer.send(topics.uploads, events[v])
            first = _revisions(read_topic(kafka.bootstrap, topics.flags, 5))
            decided = {v: parse_flag_event(r[0].value).decision for v, r in first.items()}
            assert decided == {
                "a": "flag",
                "copy": "flag",
                "b": "flag",
                "c": "allow",
                "gone": decided["gone"],
            }
            stored_copy = store.get("acme", "copy")
            assert stored_copy is not None and stored_copy.record.origin == "duplicate"
            gone.unlink()  # the platform deleted it since

            dry = _report(_rescore(kafka, topics, s, "--dry-run"))
            assert (dry["changed"], dry["emitted"]) == (2, 0)
            assert len(read_to_end(kafka.bootstrap, topics.flags)) == 5, "a dry run emits nothing"

            report = _report(_rescore(kafka, topics, s))
            # The worker still runs, its near-duplicate index holding "a" (flagged when it was loaded).
            reupload = upload_event("a-reupload", file_uri(media_root / "a_reencoded.mp4"))
            new_copy = upload_event("copy-2", file_uri(media_root / "a_copy.mp4"))
            for e in (events["a"], reupload, new_copy):  # "a" again: a redelivery
                producer.send(topics.uploads, e)
            records = read_topic(kafka.bootstrap, topics.flags, 5 + 3 + 3)
    finally:
        producer.close()

    assert {k: report[k] for k in ("selected", "rescored", "changed", "unchanged", "emitted")} == {
        "selected": 6,
        "rescored": 3,
        "changed": 2,
        "unchanged": 1,
        "emitted": 3,
    }
    assert (report["follows_original"], report["skipped_no_uri"], report["missing_media"]) == (1, 1, 1)
    assert report["no_uri"] == [{"tenant": "acme", "video_id": "legacy"}]
    assert [(m["video_id"], m["code"]) for m in report["missing"]] == [("gone", "media_not_found")]

    by_video = _revisions(records)
    v2_schema = jsonschema.Draft202012Validator(
        json.loads((SCHEMAS / "moderation.flags.v2.schema.json").read_text())
    )
    for video in ("a", "copy", "b"):
        revision = by_video[video][1]
        event = parse_flag_event(revision.value)
        assert (event.revision, event.decision) == (2, "allow"), video
        assert event.event_id == flag_event_id("acme", video, 2)
        assert (
            event.supersedes
            == flag_event_id("acme", video)
            == parse_flag_event(by_video[video][0].value).event_id
        )
        assert revision.key == video.encode() and dict(revision.headers)["schema_version"] == b"2"
        v2_schema.validate(json.loads(revision.value))
        stored = store.get("acme", video)
        assert stored is not None and stored.flag_event_json == revision.value and stored.revision == 2
        assert [e.revision for e in store.revisions("acme", video)] == [1, 2]
    assert parse_flag_event(by_video["copy"][1].value).reasons[0] == "duplicate_of:a", "the repost followed"
    assert [len(by_video[v]) for v in ("c", "gone")] == [1, 1], "unchanged and missing: nothing emitted"
    assert store.pending_emissions() == []

    redelivered = by_video["a"][2]
    assert redelivered.value == by_video["a"][1].value, "a redelivery re-emits the latest revision verbatim"
    assert dict(redelivered.headers)["schema_version"] == b"2"
    repost = parse_flag_event(by_video["copy-2"][0].value)
    assert (repost.decision, repost.reasons[0], repost.revision) == ("allow", "duplicate_of:a", 1)
    near = store.get("acme", "a-reupload")
    assert near is not None and near.record.origin == "scored", "no longer a near-duplicate of a flagged clip"
    assert not any(r.startswith("near_duplicate") for r in near.record.reasons)


def _stored_flag(store: DecisionStore, pipeline: Pipeline, video_id: str, clip: Path) -> None:
    """A worker decision taken at review = flag = 0 (as `Settings` of that time would have stored it)."""
    base = new_decision(video_id, decision="flag", sha=None)
    flag = base.flag.model_copy(
        update={"event_id": flag_event_id("acme", video_id), "model": pipeline.model_ref}
    )
    store.put(
        NewDecision(
            tenant="acme",
            origin="scored",
            thresholds=UsedThresholds(review=0.0, flag=0.0, source="settings"),
            aggregation=pipeline.policy.aggregation,
            sha256=None,
            flag=flag,
            source_uri=file_uri(clip),
        )
    )


def test_a_rescore_killed_mid_run_and_rerun_leaves_exactly_one_revision_each(
    kafka: KafkaBroker, pipeline: Pipeline, media_root: Path, tmp_path: Path
) -> None:
    topics, s, store = _on_fresh_topics(kafka, tmp_path, media_root)
    videos = [f"v{i}" for i in range(4)]
    for i, v in enumerate(videos):
        _stored_flag(store, pipeline, v, media_root / ("a.mp4" if i % 2 else "b.mp4"))

    first = _rescore(kafka, topics, s)
    deadline = time.monotonic() + 180
    while not any(store.revisions("acme", v)[-1].revision == 2 for v in videos):
        assert first.poll() is None, first.communicate()[1][-4000:]
        assert time.monotonic() < deadline, "no revision within 180 s"
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)  # right after the first revision's transaction
    first.wait(30)
    done_before = sum(store.revisions("acme", v)[-1].revision == 2 for v in videos)
    assert done_before < len(videos), "killed mid-run"

    report = _report(_rescore(kafka, topics, s))
    assert report["current"] == done_before, "revised ones are not redone"
    assert report["changed"] == len(videos) - done_before
    assert report["emitted"] == report["resumed"] + report["changed"]

    records = read_to_end(kafka.bootstrap, topics.flags)
    assert store.pending_emissions() == []
    for v in videos:
        history = store.revisions("acme", v)
        assert [(e.revision, e.decision) for e in history] == [(1, "flag"), (2, "allow")], v
        emitted = [r.value for r in records if parse_flag_event(r.value).video_id == v]
        assert emitted, f"{v}: revision 2 was never produced"
        latest = store.get("acme", v)
        assert latest is not None and set(emitted) == {latest.flag_event_json}, "one revision, maybe twice"


def _allow(pipeline: Pipeline) -> Redecision:
    """A re-decision to `allow` (what `dfguard rescore` stores at review = flag = 1)."""
    return Redecision(
        decision="allow",
        score=0.1,
        reasons=[],
        origin="scored",
        model=pipeline.model_ref,
        thresholds=UsedThresholds(review=1.0, flag=1.0, source="settings"),
        aggregation=pipeline.policy.aggregation,
        top_frames=[],
        timings=FlagTimings(fetch=1.0, total=2.0),
    )


def _pending_revision(store: DecisionStore, pipeline: Pipeline, video_id: str, clip: Path) -> bytes:
    """A revision stored by a real `revise` and left unproduced (as a rescore killed right after it)."""
    _stored_flag(store, pipeline, video_id, clip)
    stored = store.get("acme", video_id)
    assert stored is not None
    (revised,) = store.revise(stored.id, 1, _allow(pipeline))
    assert [p.id for p in store.pending_emissions()] == [revised.id]
    return revised.value


def test_a_running_worker_produces_revisions_left_pending_and_marks_them_emitted(
    kafka: KafkaBroker, pipeline: Pipeline, media_root: Path, tmp_path: Path
) -> None:
    topics, s, store = _on_fresh_topics(kafka, tmp_path, media_root, worker_outbox_interval_seconds=0.2)
    with running_worker(build_worker(s, pipeline, store)):
        value = _pending_revision(store, pipeline, "left", media_root / "b.mp4")  # after the first pass
        (record,) = read_topic(kafka.bootstrap, topics.flags, 1)
        deadline = time.monotonic() + 30
        while store.pending_emissions():
            assert time.monotonic() < deadline, "never marked emitted"
            time.sleep(0.05)
        deadline = time.monotonic() + 10
        while REVISIONS_PENDING._value.get() != 0:
            assert time.monotonic() < deadline, "gauge not refreshed"
            time.sleep(0.05)
    assert record.value == value and record.key == b"left"
    assert dict(record.headers)["schema_version"] == b"2"
    event = parse_flag_event(record.value)
    assert (event.revision, event.decision) == (2, "allow")
    assert len(read_to_end(kafka.bootstrap, topics.flags)) == 1, "produced once"


def test_rescore_first_produces_revisions_left_pending_and_a_dry_run_counts_them(
    kafka: KafkaBroker, pipeline: Pipeline, media_root: Path, tmp_path: Path
) -> None:
    topics, s, store = _on_fresh_topics(kafka, tmp_path, media_root)
    value = _pending_revision(store, pipeline, "left", media_root / "b.mp4")

    dry = _report(_rescore(kafka, topics, s, "--dry-run"))
    assert (dry["pending"], dry["resumed"], dry["emitted"]) == (1, 0, 0)
    assert read_to_end(kafka.bootstrap, topics.flags) == []

    report = _report(_rescore(kafka, topics, s, "--tenant", "nobody"))  # selects nothing: only the drain
    assert (report["pending"], report["resumed"], report["emitted"], report["selected"]) == (1, 1, 1, 0)
    (record,) = read_to_end(kafka.bootstrap, topics.flags)
    assert record.value == value and record.key == b"left"
    assert store.pending_emissions() == []


def test_a_medium_replaced_behind_its_uri_is_reported_and_not_re_decided(
    kafka: KafkaBroker, pipeline: Pipeline, media_root: Path, tmp_path: Path
) -> None:
    topics, s, store = _on_fresh_topics(kafka, tmp_path, media_root)
    clip = media_root / "replaced.mp4"
    shutil.copyfile(media_root / "b.mp4", clip)
    base = new_decision("replaced", decision="flag", sha=hashlib.sha256(clip.read_bytes()).hexdigest())
    flag = base.flag.model_copy(update={"event_id": flag_event_id("acme", "replaced")})
    store.put(
        NewDecision(
            tenant="acme",
            origin="scored",
            thresholds=UsedThresholds(review=0.0, flag=0.0, source="settings"),
            aggregation=pipeline.policy.aggregation,
            sha256=base.sha256,
            flag=flag,
            source_uri=file_uri(clip),
        )
    )
    shutil.copyfile(media_root / "c.mp4", clip)  # other bytes behind the same URI (would be `allow`)

    report = _report(_rescore(kafka, topics, s))
    assert (report["media_changed"], report["rescored"], report["changed"], report["emitted"]) == (1, 0, 0, 0)
    assert [(p["video_id"], p["code"]) for p in report["changed_media"]] == [("replaced", "media_changed")]
    stored = store.get("acme", "replaced")
    assert stored is not None and stored.revision == 1 and stored.record.decision == "flag", "it stands"
    assert read_to_end(kafka.bootstrap, topics.flags) == []


def test_rescore_cli_rejects_bad_arguments_with_exit_2(kafka: KafkaBroker, tmp_path: Path) -> None:
    topics = Topics.fresh()
    s = worker_settings(kafka.bootstrap, topics, tmp_path, tmp_path)
    proc = _rescore(kafka, topics, s, "--since", "garbage")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err[-2000:]
    error = json.loads(out)["error"]
    assert error["code"] == "invalid_request" and "garbage" in error["message"]
    for bad in (["--limit", "0"], ["--limit", "x"], ["--after-id", "-1"]):
        proc = _rescore(kafka, topics, s, *bad)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2 and bad[0] in err, bad


def test_one_decision_failing_with_an_os_error_is_reported_and_the_run_exits_1(
    pipeline: Pipeline,
    media_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = DecisionStore(f"sqlite:///{tmp_path / 'decisions.sqlite3'}")
    _stored_flag(store, pipeline, "broken", media_root / "b.mp4")
    _stored_flag(store, pipeline, "fine", media_root / "c.mp4")
    store.close()
    for name, value in {
        "DFG_DATABASE_URL": f"sqlite:///{tmp_path / 'decisions.sqlite3'}",
        "DFG_FILE_URI_ROOT": str(media_root),
        **_ALLOW_ALL,
    }.items():
        monkeypatch.setenv(name, value)
    real_fetch = rescore.fetch_to_file_sync

    def fetch(uri: str, dest: Path, *args: Any, **kw: Any) -> Any:
        if uri.endswith("b.mp4"):
            raise OSError(28, "No space left on device")
        return real_fetch(uri, dest, *args, **kw)

    monkeypatch.setattr(rescore, "fetch_to_file_sync", fetch)
    monkeypatch.setattr(compose, "build_pipeline", lambda s, **kw: _pipeline(pipeline, s))
    assert cli.main(["rescore", "--dry-run", "--json"]) == 1
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (report["failed"], report["changed"]) == (1, 1)
    (failure,) = report["failures"]
    assert failure["video_id"] == "broken" and "No space left on device" in failure["message"]
    assert report["last_id"] is not None


def test_limited_batches_walk_the_table_with_after_id(
    pipeline: Pipeline,
    media_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A dry run's changes are never stored, so without a cursor `--limit 1` would select the same one."""
    url = f"sqlite:///{tmp_path / 'decisions.sqlite3'}"
    store = DecisionStore(url)
    for v in ("first", "second"):
        _stored_flag(store, pipeline, v, media_root / "c.mp4")
    store.close()
    for name, value in {"DFG_DATABASE_URL": url, "DFG_FILE_URI_ROOT": str(media_root), **_ALLOW_ALL}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(compose, "build_pipeline", lambda s, **kw: _pipeline(pipeline, s))

    def batch(*args: str) -> dict[str, Any]:
        assert cli.main(["rescore", "--dry-run", "--json", "--limit", "1", *args]) == 0
        report: dict[str, Any] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        return report

    one = batch()
    two = batch("--after-id", str(one["last_id"]))
    three = batch("--after-id", str(two["last_id"]))
    assert [c["video_id"] for r in (one, two, three) for c in r["changes"]] == ["first", "second"]
    assert two["last_id"] > one["last_id"] and (three["selected"], three["last_id"]) == (0, None)


def test_rescore_refuses_flag_events_of_schema_version_1(kafka: KafkaBroker, tmp_path: Path) -> None:
    topics = Topics.fresh()
    s = worker_settings(kafka.bootstrap, topics, tmp_path, tmp_path)
    proc = _rescore(kafka, topics, s, env={"DFG_FLAGS_SCHEMA_VERSION": "1"})
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    error = json.loads(out)["error"]
    assert error["code"] == "invalid_request" and "DFG_FLAGS_SCHEMA_VERSION=1" in error["message"]


def test_flag_events_schema_version_1_is_kept_for_consumers_that_need_it(
    kafka: KafkaBroker, pipeline: Pipeline, media_root: Path, tmp_path: Path
) -> None:
    """v1 bytes validate against the closed v1 schema, and a redelivery under v2 re-emits them as stored,
    with the header naming what the bytes are."""
    topics = Topics.fresh()
    create_topics(kafka.bootstrap, topics, partitions=1)
    s1 = worker_settings(kafka.bootstrap, topics, tmp_path, media_root, flags_schema_version=1)
    event = upload_event("old-consumer", file_uri(media_root / "c.mp4"))
    producer = Producer(kafka.bootstrap)
    try:
        with running_worker(build_worker(s1, pipeline)):
            producer.send(topics.uploads, event)
            (v1,) = read_topic(kafka.bootstrap, topics.flags, 1)
        s2 = s1.model_copy(update={"flags_schema_version": 2})
        with running_worker(build_worker(s2, pipeline)):
            producer.send(topics.uploads, event)
            again = read_topic(kafka.bootstrap, topics.flags, 2)[1]
    finally:
        producer.close()
    v1_schema = json.loads((SCHEMAS / "moderation.flags.v1.schema.json").read_text())
    jsonschema.Draft202012Validator(v1_schema).validate(json.loads(v1.value))
    assert json.loads(v1.value)["schema_version"] == 1 and "revision" not in json.loads(v1.value)
    assert dict(v1.headers)["schema_version"] == b"1"
    assert again.value == v1.value and dict(again.headers)["schema_version"] == b"1"
    assert parse_flag_event(v1.value).revision == 1, "a v1 event reads as revision 1"
