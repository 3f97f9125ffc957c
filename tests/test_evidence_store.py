"""Evidence in the decision store, on SQLite and on a real PostgreSQL: documents and pictures, tenant
scoping, re-capture, the per-tenant quota, retention (a clock the tests control), erasure, overlays, and
migration 0005.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest
from alembic import command
from prometheus_client import REGISTRY
from sqlalchemy import create_engine, delete, func, inspect, select, text
from sqlalchemy.engine import Engine

from devtools.postgres_server import PostgresServer
from service.evidence.document import (
    AuditEntry,
    EvidenceDocument,
    EvidenceFace,
    EvidenceFrame,
    EvidenceSubject,
    OverlayState,
    SensitivityMap,
    SeriesPoint,
)
from service.evidence.pictures import EvidencePictures
from service.schemas import Decision, MediaInfo, ModelRef, UsedThresholds
from service.store import DecisionStore, StoredEvidence, migrate
from service.store import evidence as evidence_store
from service.store.decisions import engine_for
from service.store.tables import EvidencePictureRow, EvidenceRow

T0 = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
RETENTION = timedelta(days=30)
BIG_QUOTA = 1 << 30
EVIDENCE_TABLES = {"evidence", "evidence_pictures"}


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
            conn.exec_driver_sql("TRUNCATE evidence, evidence_pictures RESTART IDENTITY")
    s.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def new_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """A factory of empty databases (SQLite files, or databases in the session's PostgreSQL cluster)."""
    if request.param == "sqlite":
        yield lambda: f"sqlite:///{tmp_path / uuid.uuid4().hex}.sqlite3"
        return
    pg: PostgresServer = request.getfixturevalue("postgres")
    admin = create_engine(pg.url, isolation_level="AUTOCOMMIT")

    def make() -> str:
        name = f"e_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        return pg.url.rsplit("/", 1)[0] + f"/{name}"

    yield make
    admin.dispose()


def _jpeg(seed: int, width: int = 64, height: int = 48) -> bytes:
    """A real JPEG (noise), distinct per seed."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return buf.tobytes()


def _pictures(seed: int = 0, *, frames: int = 2, crops: int = 2, overlays: int = 0) -> EvidencePictures:
    return EvidencePictures(
        frames=[_jpeg(seed * 100 + i, 64, 36) for i in range(frames)],
        crops=[_jpeg(seed * 100 + 50 + i, 32, 32) for i in range(crops)],
        overlays=[_jpeg(seed * 100 + 80 + i, 32, 32) for i in range(overlays)],
    )


def _document(
    subject_id: str,
    *,
    tenant: str = "acme",
    subject: EvidenceSubject = "decision",
    decision: Decision = "flag",
    captured_at: datetime = T0,
    retention: timedelta = RETENTION,
    frames: int = 2,
) -> EvidenceDocument:
    """A flagged 10-s 720p clip's evidence as the pipeline captures it: kept frames downscaled to 640 px."""
    kept = [
        EvidenceFrame(
            index=30 * (3 * i + 1),
            time_s=3.0 * i + 1.0,
            score=0.91 - 0.05 * i,
            width=640,
            height=360,
            faces=[
                EvidenceFace(box=(250.0, 80.0, 390.0, 250.0), track_id=0, score=0.91 - 0.05 * i, scored=True),
                EvidenceFace(box=(40.0, 100.0, 120.0, 190.0), track_id=1, score=0.12, scored=False),
            ],
        )
        for i in range(frames)
    ]
    return EvidenceDocument(
        subject=subject,
        subject_id=subject_id,
        tenant=tenant,
        decision=decision,
        score=0.91,
        reasons=["score_above_flag_threshold"],
        model=ModelRef(name="efficientnet-b4-dfdc", version="2026.11.3"),
        thresholds=UsedThresholds(review=0.5, flag=0.8, source="ensemble"),
        aggregation="confident",
        media=MediaInfo(sha256="3f" * 32, kind="video", duration_s=10.0, width=1280, height=720),
        frames=kept,
        series=[SeriesPoint(time_s=0.5 * k, score=None if k % 7 == 0 else 0.4 + 0.02 * k) for k in range(20)],
        overlays="pending",
        audit=[
            AuditEntry(at=captured_at - timedelta(seconds=2), event="decided", detail="flag at 0.91"),
            AuditEntry(at=captured_at, event="evidence_captured"),
        ],
        captured_at=captured_at,
        expires_at=captured_at + retention,
    )


def _maps(n: int) -> list[SensitivityMap]:
    return [
        SensitivityMap(
            frame=j,
            face=0,
            track_id=0,
            score=0.91,
            grid=3,
            drop=[[0.01, 0.02, 0.0], [0.1, 0.35, 0.12], [0.0, -0.01, 0.03]],
        )
        for j in range(n)
    ]


def _size(document: EvidenceDocument, pictures: EvidencePictures) -> int:
    return pictures.nbytes + len(document.model_dump_json().encode())


def _picture_rows(store: DecisionStore) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(EvidencePictureRow)).scalar_one())


def _evidence_rows(store: DecisionStore) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(EvidenceRow)).scalar_one())


def _purged(reason: str) -> float:
    return REGISTRY.get_sample_value("dfguard_evidence_purged_total", {"reason": reason}) or 0.0


def _gauge(tenant: str) -> float | None:
    return REGISTRY.get_sample_value("dfguard_evidence_stored_bytes", {"tenant": tenant})


def _put(
    store: DecisionStore,
    document: EvidenceDocument,
    pictures: EvidencePictures,
    *,
    quota: int = BIG_QUOTA,
    now: datetime = T0,
) -> int:
    got = store.put_evidence(document, pictures, quota_bytes=quota, now=now)
    assert got is not None
    return got


def _get(
    store: DecisionStore, subject_id: str, *, tenant: str = "acme", now: datetime = T0
) -> StoredEvidence | None:
    return store.get_evidence(tenant, "decision", subject_id, now=now)


def test_document_and_pictures_round_trip(store: DecisionStore) -> None:
    doc, pics = _document("clip-1"), _pictures(1)
    evidence_id = _put(store, doc, pics)
    got = _get(store, "clip-1")
    assert got == StoredEvidence(evidence_id, doc, pics)
    assert got is not None and got.pictures.frames[0][:3] == b"\xff\xd8\xff", "JPEG bytes as given"
    assert store.get_evidence("acme", "job", "clip-1", now=T0) is None, "a job is another subject"
    assert store.evidence_bytes() == {"acme": _size(doc, pics)}
    assert _gauge("acme") == _size(doc, pics)
    job = _document("job-7f3a", subject="job", decision="review")
    job_id = _put(store, job, _pictures(2, frames=1, crops=0))
    stored_job = store.get_evidence("acme", "job", "job-7f3a", now=T0)
    assert stored_job is not None and stored_job.id == job_id and stored_job.document == job
    assert stored_job.pictures == EvidencePictures(frames=_pictures(2, frames=1).frames, crops=[])


def test_evidence_is_tenant_scoped(store: DecisionStore) -> None:
    ours, theirs = _document("shared-id", tenant="acme"), _document("shared-id", tenant="globex", frames=1)
    ours_id = _put(store, ours, _pictures(1))
    theirs_id = _put(store, theirs, _pictures(2, frames=1))
    assert ours_id != theirs_id
    got_ours, got_theirs = _get(store, "shared-id", tenant="acme"), _get(store, "shared-id", tenant="globex")
    assert got_ours is not None and got_ours.document == ours and got_ours.pictures == _pictures(1)
    assert got_theirs is not None and got_theirs.document == theirs
    assert _get(store, "shared-id", tenant="initech") is None
    assert store.erase_evidence("globex", "decision", "shared-id")
    assert _get(store, "shared-id", tenant="acme") == got_ours, "another tenant's erasure leaves ours"
    assert set(store.evidence_bytes()) == {"acme"}


def test_a_recapture_replaces_the_evidence(store: DecisionStore) -> None:
    first_id = _put(store, _document("clip-1"), _pictures(1, frames=3, crops=3))
    again = _document("clip-1", captured_at=T0 + timedelta(minutes=5), frames=1)
    second_id = _put(store, again, _pictures(2, frames=1, crops=1), now=T0 + timedelta(minutes=5))
    assert second_id != first_id, "a new id: a late overlay job of the first capture finds it gone"
    got = _get(store, "clip-1")
    assert got == StoredEvidence(second_id, again, _pictures(2, frames=1, crops=1))
    assert (_evidence_rows(store), _picture_rows(store)) == (1, 2)
    assert store.evidence_bytes() == {"acme": _size(again, _pictures(2, frames=1, crops=1))}
    assert not store.set_evidence_overlays(first_id, "ready", _maps(1), [_jpeg(9)], now=T0)


def test_the_quota_evicts_the_tenants_oldest_and_refuses_an_oversize_item(store: DecisionStore) -> None:
    theirs = _put(store, _document("g-0", tenant="globex"), _pictures(0), now=T0 - timedelta(days=3))
    docs = [_document(f"a-{i}") for i in range(4)]
    pics = [_pictures(10 + i) for i in range(4)]
    sizes = [_size(d, p) for d, p in zip(docs, pics, strict=True)]
    # stored out of id order: a-1 is captured first (created_at), a-0 second, a-2 third
    for i, at in ((1, T0), (0, T0 + timedelta(minutes=1)), (2, T0 + timedelta(minutes=2))):
        _put(store, docs[i], pics[i], now=at)
    quota = sizes[0] + sizes[1] + sizes[2] + sizes[3] - 1  # one byte short: the oldest must go
    before = _purged("quota")
    _put(store, docs[3], pics[3], quota=quota, now=T0 + timedelta(minutes=3))
    assert _purged("quota") == before + 1
    assert _get(store, "a-1") is None, "the oldest capture was evicted"
    assert all(_get(store, f"a-{i}") is not None for i in (0, 2, 3))
    kept = _get(store, "g-0", tenant="globex")
    assert kept is not None and kept.id == theirs, "another tenant's older item stays"
    assert store.evidence_bytes()["acme"] == sizes[0] + sizes[2] + sizes[3] <= quota

    # Room for a large item: as many of the oldest as needed go, and only those.
    big_doc, big_pics = _document("a-big"), _pictures(20, frames=3, crops=3)
    tight = sizes[3] + _size(big_doc, big_pics)
    _put(store, big_doc, big_pics, quota=tight, now=T0 + timedelta(minutes=4))
    assert _purged("quota") == before + 3
    assert [i for i in range(4) if _get(store, f"a-{i}") is not None] == [3]
    assert store.evidence_bytes() == {
        "acme": tight,
        "globex": _size(_document("g-0", tenant="globex"), _pictures(0)),
    }

    # An item larger than the whole quota is refused and changes nothing.
    rows = (_evidence_rows(store), _picture_rows(store))
    huge = store.put_evidence(_document("a-huge"), _pictures(30), quota_bytes=sizes[0] - 1, now=T0)
    assert huge is None
    assert (_evidence_rows(store), _picture_rows(store)) == rows
    assert _purged("quota") == before + 3 and _get(store, "a-3") is not None


def test_concurrent_captures_keep_the_quota_and_one_item_per_subject(store: DecisionStore) -> None:
    """Writers of one tenant are serialised (SQLite's write lock; PostgreSQL: the tenant's advisory lock)."""
    docs = [_document(f"c-{i}") for i in range(8)]
    pics = [_pictures(i) for i in range(8)]
    quota = 3 * max(_size(d, p) for d, p in zip(docs, pics, strict=True))
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def capture(i: int) -> None:
        barrier.wait()
        try:
            for _ in range(2):  # each subject twice: the second replaces the first
                store.put_evidence(docs[i], pics[i], quota_bytes=quota, now=T0 + timedelta(seconds=i))
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=capture, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    with store.engine.connect() as conn:
        subjects = list(conn.execute(select(EvidenceRow.subject_id)).scalars())
    assert 1 <= len(subjects) <= 3 and len(set(subjects)) == len(subjects)
    assert store.evidence_bytes()["acme"] <= quota
    assert _picture_rows(store) == 4 * len(subjects)


def test_expired_evidence_is_hidden_before_any_purge(store: DecisionStore) -> None:
    doc = _document("clip-1", retention=timedelta(hours=1))
    _put(store, doc, _pictures(1))
    expires = doc.expires_at
    assert _get(store, "clip-1", now=expires - timedelta(microseconds=1)) is not None
    assert _get(store, "clip-1", now=expires) is None, "expires_at <= now is absent"
    assert _get(store, "clip-1", now=expires + timedelta(days=1)) is None
    in_paris = expires.astimezone(timezone(timedelta(hours=1)))
    assert _get(store, "clip-1", now=in_paris) is None, "any time zone: compared in UTC"
    assert _get(store, "clip-1", now=in_paris - timedelta(seconds=1)) is not None
    assert _evidence_rows(store) == 1, "still stored until the purge"


def test_the_purge_deletes_exactly_the_expired_items_and_their_pictures(store: DecisionStore) -> None:
    # acme: expires after 1 h, 2 h, 3 h; globex: after 1 h and 3 h (each item 2 frames + 2 crops)
    for tenant, hours in (("acme", 1), ("acme", 2), ("acme", 3), ("globex", 1), ("globex", 3)):
        doc = _document(f"{tenant}-{hours}h", tenant=tenant, retention=timedelta(hours=hours))
        _put(store, doc, _pictures(hours))
    assert (_evidence_rows(store), _picture_rows(store)) == (5, 20)
    before = _purged("expired")
    assert store.purge_evidence(now=T0 + timedelta(minutes=59)) == 0
    assert store.purge_evidence(now=T0 + timedelta(hours=2)) == 3, "expires_at <= now, every tenant"
    assert _purged("expired") == before + 3
    assert (_evidence_rows(store), _picture_rows(store)) == (2, 8), "their pictures went with them"
    with store.engine.connect() as conn:
        left = set(conn.execute(select(EvidenceRow.subject_id)).scalars())
    assert left == {"acme-3h", "globex-3h"}
    assert _get(store, "acme-3h", now=T0 + timedelta(hours=2)) is not None
    assert store.evidence_bytes() == {
        t: _size(_document(f"{t}-3h", tenant=t, retention=timedelta(hours=3)), _pictures(3))
        for t in ("acme", "globex")
    }
    assert _gauge("acme") == store.evidence_bytes()["acme"]
    assert store.purge_evidence(now=T0 + timedelta(hours=2)) == 0, "nothing left to purge"
    assert _purged("expired") == before + 3


def test_the_purge_works_in_batches(store: DecisionStore) -> None:
    for i in range(7):
        _put(store, _document(f"c-{i}", retention=timedelta(minutes=i + 1)), _pictures(i, frames=1, crops=1))
    before = _purged("expired")
    gone = evidence_store.purge(store.engine, now=T0 + timedelta(minutes=5), batch=2)
    assert gone == 5 and _purged("expired") == before + 5
    assert (_evidence_rows(store), _picture_rows(store)) == (2, 4)
    assert _gauge("acme") == store.evidence_bytes()["acme"]
    gone = evidence_store.purge(store.engine, now=T0 + timedelta(days=1), batch=2)
    assert gone == 2 and (_evidence_rows(store), _picture_rows(store)) == (0, 0)
    assert store.evidence_bytes() == {} and _gauge("acme") == 0


def test_erasure_deletes_at_once(store: DecisionStore) -> None:
    _put(store, _document("clip-1"), _pictures(1))
    _put(store, _document("clip-2"), _pictures(2))
    before = _purged("erased")
    assert store.erase_evidence("acme", "decision", "clip-1")
    assert _purged("erased") == before + 1
    assert _get(store, "clip-1") is None and _get(store, "clip-2") is not None
    assert (_evidence_rows(store), _picture_rows(store)) == (1, 4)
    assert not store.erase_evidence("acme", "decision", "clip-1"), "nothing left to erase"
    assert not store.erase_evidence("acme", "job", "clip-2"), "another subject"
    assert _purged("erased") == before + 1
    assert _gauge("acme") == _size(_document("clip-2"), _pictures(2))


def test_overlays_update_the_document_and_pictures(store: DecisionStore) -> None:
    doc, pics = _document("clip-1"), _pictures(1)
    evidence_id = _put(store, doc, pics)
    overlays = [_jpeg(71, 32, 32), _jpeg(72, 32, 32)]
    later = T0 + timedelta(seconds=40)
    assert store.set_evidence_overlays(evidence_id, "ready", _maps(2), overlays, now=later)
    got = _get(store, "clip-1")
    assert got is not None and got.id == evidence_id
    assert got.document.overlays == "ready" and got.document.sensitivity == _maps(2)
    assert got.document.audit == [*doc.audit, AuditEntry(at=later, event="overlays_ready")]
    assert (
        got.document.model_copy(update={"overlays": "pending", "sensitivity": [], "audit": doc.audit}) == doc
    )
    assert got.pictures == EvidencePictures(frames=pics.frames, crops=pics.crops, overlays=overlays)
    assert store.evidence_bytes() == {"acme": _size(got.document, got.pictures)}
    with store.engine.connect() as conn:
        assert conn.execute(select(EvidenceRow.overlays)).scalar_one() == "ready"

    # A failed job after all: its overlays replaced (none), the state and the trail say so.
    failed_at = later + timedelta(seconds=1)
    state: OverlayState = "failed"
    assert store.set_evidence_overlays(evidence_id, state, [], [], now=failed_at)
    got = _get(store, "clip-1")
    assert got is not None and got.pictures.overlays == [] and got.document.overlays == "failed"
    assert got.document.sensitivity == [] and got.document.audit[-1].event == "overlays_failed"
    assert store.evidence_bytes() == {"acme": _size(got.document, got.pictures)}

    assert store.erase_evidence("acme", "decision", "clip-1")
    other = _put(store, _document("clip-2", tenant="globex"), _pictures(2))
    assert other != evidence_id, "ids are never reused (SQLite: AUTOINCREMENT)"
    assert not store.set_evidence_overlays(evidence_id, "ready", _maps(2), overlays, now=later)
    got = store.get_evidence("globex", "decision", "clip-2", now=T0)
    assert got is not None and got.pictures.overlays == [] and got.document.overlays == "pending"
    assert _picture_rows(store) == 4, "nothing written for evidence that is gone"


def test_overlays_of_expired_evidence_are_not_written(store: DecisionStore) -> None:
    doc = _document("clip-1", retention=timedelta(minutes=10))
    evidence_id = _put(store, doc, _pictures(1))
    assert not store.set_evidence_overlays(evidence_id, "ready", _maps(1), [_jpeg(3)], now=doc.expires_at)
    assert store.purge_evidence(now=doc.expires_at) == 1
    assert not store.set_evidence_overlays(evidence_id, "ready", _maps(1), [_jpeg(3)], now=T0)


def test_deleting_an_item_cascades_to_its_pictures(store: DecisionStore) -> None:
    """The foreign key is enforced (SQLite: `foreign_keys=ON` in the store's engine)."""
    evidence_id = _put(store, _document("clip-1"), _pictures(1, overlays=1))
    _put(store, _document("clip-2"), _pictures(2))
    with store.engine.begin() as conn:
        conn.execute(delete(EvidenceRow).where(EvidenceRow.id == evidence_id))
    assert _picture_rows(store) == 4


def test_times_must_be_aware(store: DecisionStore) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        store.get_evidence("acme", "decision", "clip-1", now=datetime(2026, 12, 1))


def _tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def test_migration_0005_adds_and_removes_the_evidence_tables(new_database: Callable[[], str]) -> None:
    url = new_database()
    engine = engine_for(url)
    migrate.upgrade(engine, "0004")
    assert not _tables(engine) & EVIDENCE_TABLES
    assert migrate.upgrade(engine) == migrate.Migration(
        before="0004", after=migrate.head(), stamped_legacy=False
    )
    assert _tables(engine) >= EVIDENCE_TABLES
    indexes = {i["name"] for i in inspect(engine).get_indexes("evidence")}
    assert indexes >= {"ix_evidence_expires_at", "ix_evidence_tenant_created_at"}
    [fk] = inspect(engine).get_foreign_keys("evidence_pictures")
    assert fk["referred_table"] == "evidence" and fk["options"].get("ondelete") == "CASCADE"
    if engine.dialect.name == "sqlite":  # as create_all makes it (tables.py)
        with engine.connect() as conn:
            ddl = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = 'evidence'").scalar_one()
        assert "AUTOINCREMENT" in ddl
    engine.dispose()

    store = DecisionStore(url)  # usable at 0005
    _put(store, _document("clip-1"), _pictures(1))
    store.close()

    engine = engine_for(url)
    with engine.begin() as conn:
        command.downgrade(migrate._config(conn), "0004")
    assert migrate.current(engine) == "0004"
    assert not _tables(engine) & EVIDENCE_TABLES
    assert _tables(engine) >= {"decisions", "frame_hashes", "shadow_results", "decision_revisions"}
    migrate.upgrade(engine)  # and up again: empty tables
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM evidence")).scalar_one() == 0
    engine.dispose()
