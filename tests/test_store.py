"""The decision store on SQLite and on a real PostgreSQL: idempotent writes, dedup and near-duplicates."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from devtools import media_factory as mf
from devtools.postgres_server import PostgresServer
from devtools.records import new_decision as _new
from service.config import Settings
from service.events import (
    FlagTimings,
    RevisionNotExpressible,
    encode_flag_event,
    flag_event_id,
    parse_flag_event,
)
from service.fingerprint import frame_hashes, match_fraction, to_signed, to_unsigned
from service.media import load_media
from service.schemas import Decision, ModelRef, UsedThresholds
from service.store import DecisionStore, NewDecision, revisions
from service.store.revisions import PendingRevision, Redecision, Selection, StaleRevision
from service.store.tables import DecisionRevisionRow, FrameHashRow
from service.worker.offsets import PartitionOffsets

SCHEMAS = Path(__file__).resolve().parent.parent / "docs" / "schemas"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DecisionStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    else:
        pg: PostgresServer = request.getfixturevalue("postgres")
        url = pg.url
    s = DecisionStore(url)
    yield s
    if request.param == "postgresql":  # one cluster for the session: leave it empty for the next test
        with s.engine.begin() as conn:
            conn.exec_driver_sql(
                "TRUNCATE decisions, frame_hashes, shadow_results, decision_revisions, evidence, "
                "evidence_pictures "
                "RESTART IDENTITY"
            )
    s.close()


def test_put_is_idempotent_and_the_first_decision_wins(store: DecisionStore) -> None:
    first, created = store.put(_new("v1", decision="flag", event="ev-1"))
    assert created and first.record.decision == "flag"
    again, created = store.put(_new("v1", decision="allow", event="ev-2"))
    assert not created
    assert again.flag_event_json == first.flag_event_json and again.record.source_event_id == "ev-1"
    assert store.get("acme", "v1") == first
    assert store.get("globex", "v1") is None, "tenant-scoped"
    audit = first.record
    assert audit.thresholds == UsedThresholds(review=0.5, flag=0.8, source="default")
    assert audit.aggregation == "confident"
    assert audit.model == ModelRef(name="m", version="1") and audit.timings_ms["total"] == 5.0


def test_concurrent_writers_of_one_video_agree(store: DecisionStore) -> None:
    results: list[bytes] = []
    barrier = threading.Barrier(6)

    def write(i: int) -> None:
        barrier.wait()
        stored, _ = store.put(_new("race", decision="flag" if i % 2 else "allow", event=f"ev-{i}"))
        results.append(stored.flag_event_json)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6 and len(set(results)) == 1, "every writer returns the one stored decision"


def test_exact_lookup_prefers_the_tenant_and_only_scored_decisions(store: DecisionStore) -> None:
    sha = "cd" * 32
    store.put(_new("dup", tenant="acme", sha=sha, origin="duplicate"))
    assert store.find_exact(sha, "acme") is None, "a duplicate is never the source of another"
    store.put(_new("theirs", tenant="globex", sha=sha))
    store.put(_new("ours", tenant="acme", sha=sha))
    hit = store.find_exact(sha, "acme")
    assert hit is not None and hit.record.video_id == "ours"
    other = store.find_exact(sha, "initech")
    assert other is not None and other.tenant == "globex"


def _random_hashes(seed: int, n: int = 8) -> tuple[int, ...]:
    rng = np.random.default_rng(seed)
    return tuple(int(h) for h in rng.integers(0, 1 << 63, size=n, dtype=np.int64))


def test_a_clip_flagged_for_its_speech_alone_feeds_no_near_duplicate(store: DecisionStore) -> None:
    """A cloned voice over real pictures is flagged, its faces' score under the flag threshold: re-uploads of
    the same pictures (maybe with the real voice) are scored, not flagged as its near-duplicates."""
    voiced, faces = _random_hashes(11), _random_hashes(12)
    store.put(_new("voice", decision="flag", score=0.1, hashes=voiced, sha="11" * 32))
    store.put(_new("faces", decision="flag", score=0.9, hashes=faces, sha="12" * 32))
    assert store.find_near_flagged(tuple(h ^ 1 for h in voiced), 4, 0.75) is None
    hit = store.find_near_flagged(tuple(h ^ 1 for h in faces), 4, 0.75)
    assert hit is not None and hit.record.video_id == "faces"


def test_near_duplicate_lookup_sees_only_flagged_scored_videos(store: DecisionStore) -> None:
    real, fake, other, later = (_random_hashes(seed) for seed in (1, 2, 3, 4))
    store.put(_new("real", decision="allow", hashes=real, sha="01" * 32))
    store.put(_new("fake", decision="flag", hashes=fake, sha="02" * 32))
    near = tuple(h ^ 0b101 for h in fake)  # 2 bits off each frame
    hit = store.find_near_flagged(near, max_distance=4, min_fraction=0.75)
    assert hit is not None and hit.record.video_id == "fake"
    assert store.find_near_flagged(real, 4, 0.75) is None, "allowed clips never match"
    assert store.find_near_flagged(other, 4, 0.75) is None
    half = near[:4] + other[:4]
    assert store.find_near_flagged(half, 4, 0.75) is None, "too few matching frames"
    # Incremental: a flag stored after the first lookup is seen by the next one.
    store.put(_new("fake2", decision="flag", hashes=later, sha="03" * 32))
    hit = store.find_near_flagged(tuple(h ^ 1 for h in later), 4, 0.75)
    assert hit is not None and hit.record.video_id == "fake2"


def test_store_failures_surface_as_sqlalchemy_errors(tmp_path: Path) -> None:
    """The worker maps these to retries; the gateway to 503."""
    from sqlalchemy.exc import OperationalError

    with pytest.raises(OperationalError):
        DecisionStore("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")


# --- fingerprints and offsets (pure) ---------------------------------------------------------------------


def test_re_encoded_clip_hashes_close_and_another_face_does_not(tmp_path: Path) -> None:
    a = mf.make_face_clip(tmp_path / "a.mp4", seconds=2.0, width=640, height=360)
    a2 = mf.make_face_clip(tmp_path / "a2.mp4", seconds=2.0, width=480, height=270, crf=34)
    b = mf.make_face_clip(tmp_path / "b.mp4", seconds=2.0, width=640, height=360, photo="grace_hopper")
    ha, ha2, hb = (frame_hashes(load_media(p, Settings()).frames, 8) for p in (a, a2, b))
    assert len(ha) == 8
    assert match_fraction(ha2, ha, 10) >= 0.75
    assert match_fraction(hb, ha, 10) < 0.75


@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_signed_round_trip(h: int) -> None:
    assert to_unsigned(to_signed(h)) == h and -(1 << 63) <= to_signed(h) < 1 << 63


@settings(max_examples=200)
@given(st.permutations(list(range(10))), st.integers(min_value=0, max_value=10))
def test_commit_point_is_one_past_the_contiguous_completed_prefix(order: list[int], n_done: int) -> None:
    offsets = PartitionOffsets()
    for o in range(10):
        offsets.take(100 + o)
    finished = set(order[:n_done])
    for o in order[:n_done]:
        offsets.done(100 + o)
    prefix = next((i for i in range(10) if i not in finished), 10)
    expected = None if prefix == 0 else 100 + prefix
    assert offsets.commit_point == expected
    assert offsets.outstanding == 10 - prefix
    if expected is not None:
        assert offsets.to_commit() == expected
        offsets.committed(expected)
        assert offsets.to_commit() is None


def test_offsets_must_be_taken_in_order() -> None:
    offsets = PartitionOffsets()
    offsets.take(5)
    with pytest.raises(ValueError):
        offsets.take(5)


def test_match_fraction_counts_frames_within_the_distance() -> None:
    q = [0b0000, 0b1111, 0b1111 << 60]  # 1, 3 and 5 bits from c
    c = [0b0001]
    assert match_fraction(q, c, 1) == pytest.approx(1 / 3)
    assert match_fraction(q, c, 3) == pytest.approx(2 / 3)
    assert match_fraction([], c, 3) == 0.0
    assert np.isclose(match_fraction(q, q, 0), 1.0)


# --- revisions (`dfguard rescore`) -------------------------------------------------------------------------


def _redecision(decision: Decision, *, hashes: tuple[int, ...] | None = None) -> Redecision:
    return Redecision(
        decision=decision,
        score={"allow": 0.1, "review": 0.6, "flag": 0.95}[decision],
        reasons=["rescored"],
        origin="scored",
        model=ModelRef(name="m", version="2"),
        thresholds=UsedThresholds(review=0.3, flag=0.9, source="settings"),
        aggregation="confident",
        top_frames=[],
        timings=FlagTimings(fetch=2.0, total=9.0),
        frame_hashes=hashes,
    )


def _repost(video_id: str, mark: str, *, tenant: str = "acme", sha: str = "cd" * 32) -> NewDecision:
    base = _new(video_id, tenant=tenant, decision="flag", sha=sha, origin="duplicate")
    return replace(base, flag=base.flag.model_copy(update={"reasons": [mark, "untrained_model"]}))


def test_a_re_decision_is_the_next_revision_and_keeps_the_history(store: DecisionStore) -> None:
    first, _ = store.put(_new("v1", decision="flag"))
    revised = store.revise(first.id, 1, _redecision("allow"))
    assert [r.video_id for r in revised] == ["v1"]
    event = revised[0].event
    assert event.revision == 2 and event.supersedes == first.record.flag_event_id
    assert event.event_id == flag_event_id("acme", "v1", 2) != flag_event_id("acme", "v1")
    assert event.source_event_id == first.record.source_event_id, "still the upload's decision"

    now = store.get("acme", "v1")
    assert now is not None and now.revision == 2 and now.flag_event_json == revised[0].value
    assert now.record.decision == "allow" and now.record.model == ModelRef(name="m", version="2")
    assert now.record.flag_event_id == event.event_id
    history = store.revisions("acme", "v1")
    assert [(e.revision, e.decision) for e in history] == [(1, "flag"), (2, "allow")]
    assert history[0] == parse_flag_event(first.flag_event_json), "revision 1 kept as emitted"

    assert [(p.video_id, p.revision, p.value) for p in store.pending_emissions()] == [
        ("v1", 2, revised[0].value)
    ]
    store.mark_emitted([p.id for p in store.pending_emissions()])
    assert store.pending_emissions() == []
    with pytest.raises(StaleRevision):
        store.revise(first.id, 1, _redecision("review"))  # another run got there first
    third = store.revise(first.id, 2, _redecision("review"))[0].event
    assert (third.revision, third.supersedes) == (3, event.event_id)
    assert [e.revision for e in store.revisions("acme", "v1")] == [1, 2, 3]


def test_exact_reposts_and_the_near_duplicate_index_follow_a_revision(store: DecisionStore) -> None:
    fake = _random_hashes(7)
    sha = "cd" * 32
    original, _ = store.put(_new("orig", decision="flag", sha=sha, hashes=fake))
    store.put(_repost("copy", "duplicate_of:orig"))
    store.put(_repost("elsewhere", "duplicate", tenant="globex"))
    store.put(_repost("unrelated", "duplicate_of:another"))
    assert store.find_near_flagged(fake, 4, 0.75) is not None  # the index holds it now

    revised = store.revise(original.id, 1, _redecision("allow"))
    assert [(r.tenant, r.video_id) for r in revised] == [
        ("acme", "orig"),
        ("acme", "copy"),
        ("globex", "elsewhere"),
    ]
    copy = store.get("acme", "copy")
    assert copy is not None and copy.revision == 2 and copy.record.decision == "allow"
    assert copy.record.reasons == ["duplicate_of:orig", "rescored"] and copy.record.origin == "duplicate"
    assert parse_flag_event(copy.flag_event_json).supersedes == "flag-acme-copy"  # its own revision 1
    unrelated = store.get("acme", "unrelated")
    assert unrelated is not None and unrelated.revision == 1 and unrelated.record.decision == "flag"
    exact = store.find_exact(sha, "acme")
    assert exact is not None and exact.record.decision == "allow", "a new repost reuses the latest revision"
    assert store.find_near_flagged(fake, 4, 0.75) is None, "no longer flagged: out of the index"
    assert len(store.pending_emissions()) == 3

    store.revise(original.id, 2, _redecision("flag"))
    back = store.find_near_flagged(fake, 4, 0.75)
    assert back is not None and back.record.video_id == "orig" and back.revision == 3


def test_a_lookup_that_read_a_video_unflagged_keeps_hashes_a_re_flag_added_meanwhile(
    store: DecisionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The interleaving, made deterministic: lookup A reads X as allowed; before A drops X from the index, a
    re-decision flags X again and lookup B's refresh takes X's new hash rows. X must stay findable."""
    fake = _random_hashes(11)
    x, _ = store.put(_new("x", decision="flag", hashes=fake))
    assert store.find_near_flagged(fake, 4, 0.75) is not None
    store.revise(x.id, 1, _redecision("allow"))
    forget = store._forget

    def meanwhile(decision_id: int, read_after: int) -> None:
        store.revise(x.id, 2, _redecision("flag"))  # another process flags X again
        store._refresh_flagged()  # another thread's lookup reads the new rows
        forget(decision_id, read_after)

    monkeypatch.setattr(store, "_forget", meanwhile)
    assert store.find_near_flagged(fake, 4, 0.75) is None, "A read X as allowed"
    monkeypatch.undo()
    found = store.find_near_flagged(fake, 4, 0.75)
    assert found is not None and found.record.video_id == "x" and found.revision == 3


def test_only_the_revision_key_is_a_stale_revision_other_integrity_errors_propagate(
    store: DecisionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = store.put(_new("k", decision="flag"))
    with store.engine.begin() as conn:  # another run's revision 2, its `decisions` update not yet seen
        conn.execute(
            insert(DecisionRevisionRow).values(
                decision_id=first.id,
                revision=2,
                flag_event_id="other-run",
                decision="allow",
                reasons=[],
                origin="scored",
                model_name="m",
                model_version="2",
                review_threshold=0.3,
                flag_threshold=0.9,
                aggregation="confident",
                flag_event="{}",
                decided_at=datetime.now(UTC),
            )
        )
    with pytest.raises(StaleRevision, match="exists already"):
        store.revise(first.id, 1, _redecision("allow"))

    other, _ = store.put(_new("k2", decision="flag"))

    def broken(s: Session, *args: Any) -> None:  # e.g. a bug writing hashes of a decision that is not there
        s.execute(insert(FrameHashRow).values(decision_id=10**9, flagged=True, hash=1))
        s.flush()

    monkeypatch.setattr(revisions, "_mark_hashes", broken)
    with pytest.raises(IntegrityError) as raised:
        store.revise(other.id, 1, _redecision("allow"))
    assert not isinstance(raised.value, StaleRevision)
    assert store.get("acme", "k2") is not None and store.revisions("acme", "k2")[-1].revision == 1


def test_a_repost_stored_with_the_verdict_before_a_revision_is_brought_to_follow_it(
    store: DecisionStore,
) -> None:
    """The race: a live worker reused the original's verdict just before `revise` committed, and stored the
    repost after (so `revise` did not see it). A later re-score revises it to follow."""
    sha = "cd" * 32
    original, _ = store.put(_new("orig", decision="flag", sha=sha))
    store.revise(original.id, 1, _redecision("allow"))
    late, _ = store.put(_repost("late", "duplicate_of:orig"))  # the verdict read before: flag
    unrelated, _ = store.put(_repost("unrelated", "duplicate_of:another"))
    assert store.lagging_original(late.id) == ("orig", "allow")
    assert store.lagging_original(unrelated.id) is None, "not a repost of a stored original"
    (followed,) = store.follow_original(late.id, 1)
    assert (followed.event.revision, followed.event.decision) == (2, "allow")
    assert followed.event.reasons == ["duplicate_of:orig", "rescored"]
    now = store.get("acme", "late")
    assert now is not None and now.revision == 2 and now.record.origin == "duplicate"
    assert store.lagging_original(late.id) is None and store.follow_original(late.id, 2) == []
    with pytest.raises(StaleRevision):
        store.follow_original(late.id, 1)


def test_candidates_page_through_by_id_and_resume_after_a_cursor(store: DecisionStore) -> None:
    ids = [store.put(_new(f"p{i}", decision="flag" if i % 2 else "allow"))[0].id for i in range(7)]

    def walk(sel: Selection, page: int) -> list[int]:
        return [c.id for c in revisions.candidates(store.engine, sel, page=page)]

    assert walk(Selection(), 2) == ids
    assert walk(Selection(limit=3), 2) == ids[:3]
    assert walk(Selection(limit=3, after_id=ids[2]), 2) == ids[3:6]
    assert walk(Selection(decisions=frozenset({"flag"}), after_id=ids[1]), 1) == ids[3::2]
    assert [c.video_id for c in store.candidates(Selection(after_id=ids[5]))] == ["p6"]


def test_drain_marks_only_what_was_produced_and_a_failed_batch_stays_pending(store: DecisionStore) -> None:
    for v in ("d1", "d2"):
        stored, _ = store.put(_new(v, decision="flag"))
        store.revise(stored.id, 1, _redecision("allow"))
    assert store.pending_count() == 2

    def broker_down(batch: list[PendingRevision]) -> None:
        raise OSError("broker down")

    with pytest.raises(OSError):
        store.drain_pending(broker_down)
    assert store.pending_count() == 2, "nothing marked without an acknowledgement"

    produced: list[str] = []
    assert store.drain_pending(lambda batch: produced.extend(p.video_id for p in batch)) == 2
    assert produced == ["d1", "d2"] and store.pending_count() == 0
    assert store.drain_pending(lambda batch: produced.extend(p.video_id for p in batch)) == 0


@pytest.mark.postgres
def test_concurrent_drains_on_postgresql_do_not_share_rows(postgres: PostgresServer) -> None:
    a, b = DecisionStore(postgres.url), DecisionStore(postgres.url)
    try:
        stored, _ = a.put(_new("race", decision="flag"))
        a.revise(stored.id, 1, _redecision("allow"))
        seen_by_b: list[int] = []

        def produce_a(batch: list[PendingRevision]) -> None:  # b drains while a holds its claim
            assert b.drain_pending(lambda other: seen_by_b.extend(p.id for p in other)) == 0

        assert a.drain_pending(produce_a) == 1
        assert seen_by_b == [] and a.pending_count() == 0
    finally:
        with a.engine.begin() as conn:
            conn.exec_driver_sql(
                "TRUNCATE decisions, frame_hashes, shadow_results, decision_revisions, evidence, "
                "evidence_pictures "
                "RESTART IDENTITY"
            )
        a.close()
        b.close()


def test_flag_events_are_stored_in_the_configured_schema_version(store: DecisionStore) -> None:
    v1 = jsonschema.Draft202012Validator(
        json.loads((SCHEMAS / "moderation.flags.v1.schema.json").read_text())
    )
    v2 = jsonschema.Draft202012Validator(
        json.loads((SCHEMAS / "moderation.flags.v2.schema.json").read_text())
    )
    old, _ = store.put(replace(_new("old"), schema_version=1))
    new, _ = store.put(_new("new"))
    assert old.schema_version == 1 and json.loads(old.flag_event_json)["schema_version"] == 1
    v1.validate(json.loads(old.flag_event_json))
    assert new.schema_version == 2 and json.loads(new.flag_event_json)["revision"] == 1
    v2.validate(json.loads(new.flag_event_json))
    assert store.get("acme", "old") == old, "a v1 event reads back as stored"
    revised = store.revise(old.id, 1, _redecision("flag"))[0]
    v2.validate(json.loads(revised.value))
    assert [e.schema_version for e in store.revisions("acme", "old")] == [2, 2]  # parsed as v2 models
    with pytest.raises(RevisionNotExpressible):
        encode_flag_event(revised.event, 1)
