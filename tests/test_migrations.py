"""Alembic migrations of the decision store, on SQLite and on a real PostgreSQL.

The first revision must be exactly the schema `create_all` made, a database made by `create_all` (with data)
must upgrade in place, concurrent starters must migrate once, and the models must match the newest revision.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, insert, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError

from devtools.postgres_server import PostgresServer
from devtools.records import make_legacy_database, new_decision
from service.fingerprint import to_signed
from service.store import DecisionStore, NewDecision, SchemaNotCurrent, migrate
from service.store.decisions import engine_for
from service.store.tables import Base, DecisionRow, FrameHashRow

NewDatabase = Callable[[], str]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def new_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NewDatabase]:
    """A factory of empty databases (SQLite files, or databases in the session's PostgreSQL cluster)."""
    if request.param == "sqlite":
        yield lambda: f"sqlite:///{tmp_path / uuid.uuid4().hex}.sqlite3"
        return
    pg: PostgresServer = request.getfixturevalue("postgres")
    admin = create_engine(pg.url, isolation_level="AUTOCOMMIT")

    def make() -> str:
        name = f"m_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        return pg.url.rsplit("/", 1)[0] + f"/{name}"

    yield make
    admin.dispose()


def _schema(engine: Engine) -> dict[str, Any]:
    """Everything the inspector reports about our tables (alembic's own version table left out)."""
    insp = inspect(engine)
    out: dict[str, Any] = {}
    for table in sorted(set(insp.get_table_names()) - {"alembic_version"}):
        out[table] = {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"], str(c.get("default")), c.get("autoincrement"))
                for c in insp.get_columns(table)
            ],
            "primary_key": insp.get_pk_constraint(table),
            "foreign_keys": insp.get_foreign_keys(table),
            "unique": sorted(insp.get_unique_constraints(table), key=lambda u: str(u["name"])),
            "indexes": sorted(insp.get_indexes(table), key=lambda i: str(i["name"])),
        }
    return out


def _legacy_put(conn: Connection, new: NewDecision) -> int:
    """A decision written as the store wrote it before migrations (same columns, same values)."""
    f = new.flag
    row_id: int = conn.execute(
        insert(DecisionRow)
        .values(
            tenant=new.tenant,
            video_id=f.video_id,
            decision=f.decision,
            score=f.score,
            reasons=list(f.reasons),
            origin=new.origin,
            model_name=f.model.name,
            model_version=f.model.version,
            review_threshold=new.thresholds.review,
            flag_threshold=new.thresholds.flag,
            aggregation=new.aggregation,
            sha256=new.sha256,
            source_event_id=f.source_event_id,
            flag_event_id=f.event_id,
            timings_ms=f.timings_ms.model_dump(),
            flag_event=f.model_dump_json(),
            decided_at=f.decided_at,
        )
        .returning(DecisionRow.id)
    ).scalar_one()
    if new.frame_hashes:
        flagged = f.decision == "flag"
        rows = [{"decision_id": row_id, "flagged": flagged, "hash": to_signed(h)} for h in new.frame_hashes]
        conn.execute(insert(FrameHashRow), rows)
    return row_id


def test_the_baseline_revision_is_the_schema_create_all_made(new_database: NewDatabase) -> None:
    made, migrated = make_legacy_database(new_database()), engine_for(new_database())
    result = migrate.upgrade(migrated, migrate.BASELINE)
    assert result == migrate.Migration(before=None, after=migrate.BASELINE, stamped_legacy=False)
    assert _schema(migrated) == _schema(made)
    assert _schema(made).keys() == {"decisions", "frame_hashes"}
    made.dispose()
    migrated.dispose()


def test_the_models_match_the_migrations(new_database: NewDatabase) -> None:
    """`tables.py` and the newest revision describe one schema (a model change needs a revision)."""
    made, migrated = engine_for(new_database()), engine_for(new_database())
    Base.metadata.create_all(made)
    migrate.upgrade(migrated)
    assert _schema(migrated) == _schema(made)
    with migrated.connect() as conn:  # autogenerate finds nothing to add
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    made.dispose()
    migrated.dispose()


def test_a_create_all_database_with_data_upgrades_in_place(new_database: NewDatabase) -> None:
    url = new_database()
    legacy = make_legacy_database(url)
    hashes = (1 << 62, 12345, (1 << 63) + 7, 99)  # one past the signed range: stored negative
    with legacy.begin() as conn:
        old_flag = _legacy_put(conn, new_decision("old-1", decision="flag", hashes=hashes, sha="01" * 32))
        old_allow = _legacy_put(conn, new_decision("old-2", tenant="globex", sha="02" * 32))
    legacy.dispose()

    store = DecisionStore(url)  # a start now: adopts the tables as revision 0001, then upgrades to head
    assert migrate.current(store.engine) == migrate.head()
    got = store.get("acme", "old-1")
    assert got is not None and got.id == old_flag and got.record.decision == "flag"
    assert got.flag_event_json == new_decision("old-1", decision="flag").flag.model_dump_json().encode()
    other = store.get("globex", "old-2")
    assert other is not None and other.id == old_allow
    near = store.find_near_flagged(hashes, max_distance=0, min_fraction=1.0)
    assert near is not None and near.record.video_id == "old-1", "frame hashes survived"
    fresh, created = store.put(new_decision("new-1"))
    assert created and fresh.id > max(old_flag, old_allow), "ids continue after the old rows"
    again, created = store.put(new_decision("old-1", decision="allow"))
    assert not created and again.record.decision == "flag", "the first decision still wins"
    store.close()
    with engine_for(url).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1


def test_downgrading_0004_and_0003_keeps_the_decisions_and_their_frame_hashes(
    new_database: NewDatabase,
) -> None:
    """The downgrades drop columns in place: a rebuilt `decisions` table would cascade (foreign keys on)."""
    url = new_database()
    store = DecisionStore(url)
    store.put(new_decision("kept", decision="flag", hashes=(1, 2, 3)))
    store.close()
    engine = engine_for(url)  # as the store opens it: SQLite with foreign keys on
    with engine.begin() as conn:
        command.downgrade(migrate._config(conn), "0002")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM frame_hashes")).scalar_one() == 3
        assert conn.execute(text("SELECT video_id FROM decisions")).scalars().all() == ["kept"]
    columns = {c["name"] for c in inspect(engine).get_columns("decisions")}
    assert not columns & {"source_uri", "revision"}
    assert migrate.current(engine) == "0002"
    migrate.upgrade(engine)  # and back up, data intact
    engine.dispose()
    again = DecisionStore(url)
    assert again.find_near_flagged((1, 2, 3), 0, 1.0) is not None
    again.close()


def test_concurrent_starters_migrate_once(new_database: NewDatabase) -> None:
    url = new_database()
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def start() -> None:
        barrier.wait()
        try:
            DecisionStore(url).close()  # each its own engine and connections, as separate processes would
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    engine = engine_for(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [
            migrate.head()
        ]
    engine.dispose()


def test_a_store_that_may_not_migrate_refuses_an_old_schema(new_database: NewDatabase) -> None:
    url = new_database()
    store = DecisionStore(url, migrate=False, lazy=True)  # lazy: nothing touched yet
    with pytest.raises(SchemaNotCurrent, match="dfguard db upgrade"):
        store.get("acme", "v")
    migrate.upgrade(store.engine)  # the operator's separate step
    assert store.get("acme", "v") is None
    store.close()


def test_a_lazy_store_starts_without_its_database() -> None:
    store = DecisionStore("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2", lazy=True)
    assert not store.schema_ready
    with pytest.raises(OperationalError):
        store.ping()
    store.close()
