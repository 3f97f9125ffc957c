"""`dfguard models diff`: the store's shadow results (SQLite and a real PostgreSQL, schema by the migrations)
and a labelled folder of real media scored by two model lists, through the real CLI entry point."""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import insert

from devtools import media_factory as mf
from service.cli import main
from service.evaluation import DECISIONS
from service.models import BUILTIN_DIR, DEFAULT_ENSEMBLE
from service.models_diff import (
    DiffInputError,
    FolderDiff,
    ModelFilter,
    StoreDiff,
    Window,
    parse_time,
    read_labels,
    store_diff,
)
from service.store import DecisionStore
from service.store.tables import ShadowRow
from tests.test_migrations import NewDatabase, new_database  # noqa: F401 - the sqlite/postgresql fixture

UNTRAINED = BUILTIN_DIR / "untrained-mini" / "model.json"
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)  # far from the real clock: relative windows miss it


def _row(
    video: str,
    primary: tuple[float | None, str],
    shadow: tuple[float | None, str],
    at: datetime,
    *,
    tenant: str = "acme",
    source: str = "worker",
    shadow_model: tuple[str, str] = ("candidate", "1"),
) -> dict[str, Any]:
    return {
        "decision_id": None,
        "source": source,
        "tenant": tenant,
        "video_id": None if source == "gateway" else video,
        "sha256": video.encode().hex().ljust(64, "0")[:64],
        "primary_model_name": "dfguard-default",
        "primary_model_version": "2.0.0",
        "primary_score": primary[0],
        "primary_decision": primary[1],
        "shadow_model_name": shadow_model[0],
        "shadow_model_version": shadow_model[1],
        "shadow_score": shadow[0],
        "shadow_decision": shadow[1],
        "shadow_review_threshold": 0.5,
        "shadow_flag_threshold": 0.8,
        "created_at": at,
    }


ROWS = [
    _row("same-allow", (0.1, "allow"), (0.2, "allow"), NOW - timedelta(hours=5)),
    _row("up-review", (0.3, "allow"), (0.6, "review"), NOW - timedelta(hours=4)),
    _row("up-flag", (0.85, "review"), (0.9, "flag"), NOW - timedelta(hours=3), tenant="globex"),
    _row("down-allow", (0.97, "flag"), (None, "allow"), NOW - timedelta(hours=2), source="gateway"),
    _row("same-flag", (0.99, "flag"), (0.95, "flag"), NOW - timedelta(hours=1)),
    _row("too-old", (0.1, "allow"), (0.9, "flag"), NOW - timedelta(days=3)),
    _row("at-until", (0.1, "allow"), (0.9, "flag"), NOW),  # the window is half-open
]
DAY = Window(since=NOW - timedelta(hours=24), until=NOW)


@pytest.fixture
def store_url(new_database: NewDatabase) -> str:  # noqa: F811 - the imported fixture
    """A store made as the services make it (migrations to head), holding `ROWS`."""
    url = new_database()
    store = DecisionStore(url)
    with store.engine.begin() as conn:
        conn.execute(insert(ShadowRow), ROWS)
    store.close()
    return url


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["models", "diff", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_store_diff_counts_the_window_and_lists_changes_newest_first(store_url: str) -> None:
    store = DecisionStore(store_url)
    try:
        d = store_diff(store.engine, DAY)
        assert d.n == 5
        assert d.confusion.counts == [[1, 1, 0], [0, 0, 1], [1, 0, 1]]
        assert (d.changed, d.stricter, d.changed_share) == (3, 2, 0.6)
        assert d.primary_decisions == {"allow": 2, "review": 1, "flag": 2}
        assert d.shadow_decisions == {"allow": 2, "review": 1, "flag": 2}
        assert [(m.primary.name, m.shadow.name, m.n) for m in d.models] == [
            ("dfguard-default", "candidate", 5)
        ]
        assert [(i.video_id, i.primary_decision, i.shadow_decision) for i in d.items] == [
            (None, "flag", "allow"),  # gateway scoring: no video id, the sha256 names it
            ("up-flag", "review", "flag"),
            ("up-review", "allow", "review"),
        ]
        gateway = d.items[0]
        assert gateway.source == "gateway" and gateway.primary_score == 0.97 and gateway.shadow_score is None
        assert gateway.created_at == NOW - timedelta(hours=2)

        capped = store_diff(store.engine, DAY, limit=1)
        assert capped.changed == 3 and [i.video_id for i in capped.items] == [None]
        acme = store_diff(store.engine, DAY, tenant="acme")
        assert acme.n == 4 and acme.changed == 2 and {i.tenant for i in acme.items} == {"acme"}
        worker = store_diff(store.engine, DAY, source="worker")
        assert worker.n == 4 and [i.video_id for i in worker.items] == ["up-flag", "up-review"]
        week = store_diff(
            store.engine, Window(since=NOW - timedelta(days=7), until=NOW + timedelta(seconds=1))
        )
        assert week.n == 7 and week.changed == 5
        empty = store_diff(store.engine, DAY, tenant="nobody")
        assert empty.n == 0 and empty.changed_share is None and empty.items == []
    finally:
        store.close()


def test_cli_json_and_table(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    window = ["--since", "2025-05-31T12:00:00Z", "--until", NOW.isoformat()]
    code, out, err = _cli(capsys, "--database-url", store_url, *window, "--json", "--limit", "2")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    StoreDiff.model_validate(doc)  # the documented shape
    assert doc["mode"] == "store" and doc["n"] == 5 and doc["changed"] == 3 and len(doc["items"]) == 2
    assert doc["confusion"] == {"labels": list(DECISIONS), "counts": [[1, 1, 0], [0, 0, 1], [1, 0, 1]]}
    assert doc["window"]["since"].startswith("2025-05-31T12:00:00")

    code, out, _ = _cli(capsys, "--database-url", store_url, *window, "--tenant", "globex")
    assert code == 0
    assert "shadow results" in out and ", tenant globex: 1" in out
    assert "up-flag" in out and "up-review" not in out


def test_cli_relative_window(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The rows lie around a fixed NOW; a relative `--since` counts back from the real clock."""
    store = DecisionStore(store_url)
    with store.engine.begin() as conn:
        conn.execute(
            insert(ShadowRow),
            [
                _row("recent", (0.1, "allow"), (0.9, "flag"), datetime.now(UTC) - timedelta(minutes=30)),
                _row("earlier", (0.1, "allow"), (0.9, "flag"), datetime.now(UTC) - timedelta(hours=3)),
            ],
        )
    store.close()
    code, out, _ = _cli(capsys, "--database-url", store_url, "--since", "2h", "--json")
    assert code == 0 and [i["video_id"] for i in json.loads(out)["items"]] == ["recent"]
    code, out, _ = _cli(capsys, "--database-url", store_url, "--json")  # default: the last 24 hours
    assert code == 0 and json.loads(out)["n"] == 2


def test_store_unavailable_is_a_typed_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _cli(capsys, "--database-url", "postgresql+psycopg://u:secret@127.0.0.1:1/db", "--json")
    assert code == 1 and err == ""
    error = json.loads(out)["error"]
    assert error["code"] == "store_unavailable" and "secret" not in error["message"]

    missing = tmp_path / "missing.sqlite3"
    code, _, err = _cli(capsys, "--database-url", f"sqlite:///{missing}")
    assert code == 1 and "store_unavailable" in err and not missing.exists()  # a read never creates a store

    old = tmp_path / "old.sqlite3"  # a store without the shadow table (made before revision 0003)
    sqlite3.connect(old).execute("CREATE TABLE decisions (id INTEGER PRIMARY KEY)").connection.commit()
    code, _, err = _cli(capsys, "--database-url", f"sqlite:///{old}")
    assert code == 1 and "dfguard db upgrade" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "neither an ISO 8601 time"),
        (["--since", "1h", "--until", "2h"], "empty window"),
        (["--labels", "x.csv"], "go with --folder"),
        (["--limit", "-1"], "--limit must be 0 or more"),
        (["--since", "1000000w"], "before the year 1"),  # past datetime's range: no OverflowError
        (["--shadow-model", "candidate:"], "NAME or NAME:VERSION"),
    ],
)
def test_bad_store_arguments_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, _, err = _cli(capsys, *args)
    assert code == 2 and "invalid_request" in err and message in err


def test_parse_time() -> None:
    assert parse_time("24h", NOW) == NOW - timedelta(hours=24)
    assert parse_time("7d", NOW) == NOW - timedelta(days=7)
    assert parse_time("90m", NOW) == NOW - timedelta(minutes=90)
    assert parse_time("2025-06-01T10:00:00", NOW) == datetime(2025, 6, 1, 10, tzinfo=UTC)
    assert parse_time("2025-06-01T12:00:00+02:00", NOW) == datetime(2025, 6, 1, 10, tzinfo=UTC)
    with pytest.raises(DiffInputError):
        parse_time("-1h", NOW)
    for huge in ("1000000w", "99999999999999999999w", "9999999999999d"):
        with pytest.raises(DiffInputError, match="before the year 1"):
            parse_time(huge, NOW)


def test_several_model_pairs_are_flagged_and_filtered(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """One matrix over two candidates would mix them: the report says so, and the filters keep one."""
    store = DecisionStore(store_url)
    later = ("candidate", "2")
    try:
        with store.engine.begin() as conn:
            conn.execute(
                insert(ShadowRow),
                [
                    _row(
                        "v2-a", (0.1, "allow"), (0.9, "flag"), NOW - timedelta(minutes=30), shadow_model=later
                    ),
                    _row(
                        "v2-b",
                        (0.1, "allow"),
                        (0.1, "allow"),
                        NOW - timedelta(minutes=20),
                        shadow_model=later,
                    ),
                    _row(
                        "other",
                        (0.1, "allow"),
                        (0.9, "flag"),
                        NOW - timedelta(minutes=10),
                        shadow_model=("x", "1"),
                    ),
                ],
            )
        mixed = store_diff(store.engine, DAY)
        assert mixed.n == 8 and len(mixed.models) == 3
        assert len(mixed.warnings) == 1 and "3 (primary, shadow) model pairs" in mixed.warnings[0]
        v2 = store_diff(store.engine, DAY, shadow_model=ModelFilter.parse("candidate:2"))
        assert (v2.n, v2.changed, v2.warnings) == (2, 1, [])
        assert [i.video_id for i in v2.items] == ["v2-a"]
        named = store_diff(store.engine, DAY, shadow_model=ModelFilter.parse("candidate"))
        assert named.n == 7 and len(named.warnings) == 1  # both versions of the candidate: still mixed
        v1 = store_diff(
            store.engine,
            DAY,
            primary_model=ModelFilter.parse("dfguard-default:2.0.0"),
            shadow_model=ModelFilter.parse("candidate:1"),
        )
        assert (v1.n, v1.changed, v1.warnings) == (5, 3, [])
        assert store_diff(store.engine, DAY, primary_model=ModelFilter.parse("dfguard-default:9")).n == 0
    finally:
        store.close()
    window = ["--since", "2025-05-31T12:00:00Z", "--until", NOW.isoformat()]
    code, out, _ = _cli(capsys, "--database-url", store_url, *window)
    assert code == 0 and "warning: 3 (primary, shadow) model pairs" in out
    code, out, _ = _cli(
        capsys, "--database-url", store_url, *window, "--shadow-model", "candidate:2", "--json"
    )
    doc = json.loads(out)
    assert code == 0 and doc["n"] == 2 and doc["warnings"] == []
    assert doc["shadow_model"] == {"name": "candidate", "version": "2"} and doc["primary_model"] is None
    code, out, _ = _cli(capsys, "--database-url", store_url, *window, "--shadow-model", "candidate:2")
    assert code == 0 and ", shadow candidate:2: 2" in out and "warning" not in out


def test_read_labels(tmp_path: Path) -> None:
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("filename,label\na.mp4,REAL\nb.mp4,fake\nsub/c.jpg,1\n\nd.png, 0\n")
    assert read_labels(csv_file) == {"a.mp4": 0, "b.mp4": 1, "sub/c.jpg": 1, "d.png": 0}
    meta = tmp_path / "metadata.json"
    meta.write_text(json.dumps({"a.mp4": {"label": "FAKE", "original": "b.mp4"}, "b.mp4": {"label": "REAL"}}))
    assert read_labels(meta) == {"a.mp4": 1, "b.mp4": 0}
    for text, message in [
        ("a.mp4,maybe\n", r"labels.csv:1: unknown label 'maybe'"),
        ("a.mp4\n", "expected filename,label"),
        ("a.mp4,1\na.mp4,0\n", "labelled both real and fake"),
        ("filename,label\n", "no labelled files"),
    ]:
        csv_file.write_text(text)
        with pytest.raises(DiffInputError, match=message):
            read_labels(csv_file)
    meta.write_text(json.dumps({"a.mp4": {"split": "train"}}))
    with pytest.raises(DiffInputError, match="has no label"):
        read_labels(meta)
    with pytest.raises(DiffInputError, match="cannot read the label file"):
        read_labels(tmp_path / "nope.csv")


@pytest.fixture(scope="module")
def labelled_folder(tmp_path_factory: pytest.TempPathFactory, face_clip: Path, face_free_clip: Path) -> Path:
    """Three scorable media (a face clip, a face-free clip, a face photo), one broken file, one unlabelled."""
    root = tmp_path_factory.mktemp("labelled")
    media = root / "media"
    media.mkdir()
    shutil.copy(face_clip, media / "face.mp4")
    shutil.copy(face_free_clip, media / "noface.mp4")
    Image.fromarray(mf.face_photos()["grace_hopper"]).save(media / "hopper.jpg")
    (media / "broken.mp4").write_bytes(b"not a video at all")
    Image.new("RGB", (8, 8)).save(media / "unlabelled.png")
    (root / "labels.csv").write_text(
        "filename,label\nface.mp4,real\nnoface.mp4,0\nhopper.jpg,FAKE\nbroken.mp4,1\n"
    )
    return root


def test_folder_diff_scores_both_lists(labelled_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "--folder",
        str(labelled_folder / "media"),
        "--labels",
        str(labelled_folder / "labels.csv"),
        "--primary",
        str(DEFAULT_ENSEMBLE),
        "--candidate",
        str(UNTRAINED),
    ]
    code, out, err = _cli(capsys, *args, "--json")
    assert (code, err) == (0, "")
    d = FolderDiff.model_validate(json.loads(out))
    assert (d.labelled, d.unlabelled) == (4, 1)
    assert [(f.file, f.code) for f in d.failed] == [("broken.mp4", "unsupported_media")]
    assert d.primary.model.name == "dfguard-default" and d.candidate.model.name == "dfguard-untrained-mini"
    for r in (d.primary, d.candidate):
        assert (r.n, r.n_fake) == (3, 1)
        assert r.no_face >= 1  # the face-free clip scores nothing: 0.5 for the metrics
        assert r.auc is not None and 0.0 <= r.auc <= 1.0
        assert r.log_loss is not None and 0.0 < r.log_loss < 35
        assert sum(r.decisions.values()) == 3 and math.isclose(
            sum(v or 0 for v in r.decision_shares.values()), 1
        )
        assert sum(r.decisions_by_label["fake"].values()) == 1
    counts = d.confusion.counts
    assert sum(map(sum, counts)) == 3
    assert [sum(row) for row in counts] == [d.primary.decisions[k] for k in DECISIONS]
    assert [sum(col) for col in zip(*counts, strict=True)] == [d.candidate.decisions[k] for k in DECISIONS]
    assert d.changed == len(d.items) == 3 - sum(counts[i][i] for i in range(3))
    for item in d.items:
        assert item.primary_decision != item.candidate_decision

    code, out, _ = _cli(capsys, *args)
    assert code == 0 and "failed: broken.mp4: unsupported_media" in out and "dfguard-untrained-mini" in out


def test_folder_diff_matches_scoring_the_file_directly(
    labelled_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The figures come from the served pipeline: the candidate's score of a file is `dfguard score`'s."""
    media = labelled_folder / "media"
    labels = labelled_folder / "one.csv"
    labels.write_text("hopper.jpg,fake\n")
    code, out, _ = _cli(
        capsys, "--folder", str(media), "--labels", str(labels), "--candidate", str(UNTRAINED), "--json"
    )
    assert code == 0
    d = FolderDiff.model_validate(json.loads(out))
    from service.compose import build_pipeline
    from service.config import Settings

    direct = build_pipeline(Settings(model_paths=[UNTRAINED]), batching=False).score_file(
        media / "hopper.jpg"
    )
    assert d.candidate.n == 1 and d.candidate.auc is None  # one class only: AUC is undefined
    assert direct.score is not None
    expected = -math.log(direct.score)
    assert d.candidate.log_loss == pytest.approx(expected, abs=1e-5)
    assert d.candidate.decisions[direct.decision] == 1


def test_the_candidate_is_judged_as_the_live_shadow_without_the_primarys_overrides(
    labelled_folder: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`DFG_REVIEW_THRESHOLD` / `DFG_FLAG_THRESHOLD` are the primary's: with the same model on both sides the
    scores agree (one decode, the same faces), and only the primary's decisions follow the override."""
    monkeypatch.setenv("DFG_REVIEW_THRESHOLD", "0")
    monkeypatch.setenv("DFG_FLAG_THRESHOLD", "0")
    labels = labelled_folder / "faces.csv"
    labels.write_text("face.mp4,real\nhopper.jpg,fake\n")
    model = str(UNTRAINED)
    code, out, _ = _cli(
        capsys,
        *("--folder", str(labelled_folder / "media"), "--labels", str(labels)),
        *("--primary", model, "--candidate", model, "--json"),
    )
    assert code == 0
    d = FolderDiff.model_validate(json.loads(out))
    assert (d.primary.thresholds.review, d.primary.thresholds.flag, d.primary.thresholds.source) == (
        0.0,
        0.0,
        "settings",
    )
    assert d.primary.decisions == {"allow": 0, "review": 0, "flag": 2}, "every score is at or above 0"
    assert d.candidate.thresholds.source != "settings" and d.candidate.thresholds.review == 0.5
    assert d.candidate.log_loss == d.primary.log_loss and d.candidate.auc == d.primary.auc  # the same scores
    assert d.candidate.decisions != d.primary.decisions
    assert d.items and all(c.candidate_score == c.primary_score for c in d.items)


def test_a_backend_outage_stops_the_folder_diff(
    labelled_folder: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Triton that refuses connections is not every file's fault: exit 1 with the outage, no report."""
    monkeypatch.setenv("DFG_BACKEND", "triton")
    monkeypatch.setenv("DFG_TRITON_URL", "127.0.0.1:1")  # nothing listens on port 1
    monkeypatch.setenv("DFG_TRITON_RETRIES", "0")
    code, out, _ = _cli(
        capsys,
        *("--folder", str(labelled_folder / "media"), "--labels", str(labelled_folder / "labels.csv")),
        *("--candidate", str(UNTRAINED), "--json"),
    )
    error = json.loads(out)["error"]
    assert code == 1 and error["code"] == "backend_unavailable"
    assert error["message"].startswith("models diff stopped at face.mp4:")


def test_folder_diff_input_errors(labelled_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    media = str(labelled_folder / "media")
    bad = labelled_folder / "bad.csv"
    bad.write_text("face.mp4,deepfake\n")
    code, out, _ = _cli(
        capsys, "--folder", media, "--labels", str(bad), "--candidate", str(UNTRAINED), "--json"
    )
    assert code == 2 and json.loads(out)["error"]["code"] == "invalid_request" and "deepfake" in out
    code, _, err = _cli(
        capsys, "--folder", media, "--labels", "/nonexistent.csv", "--candidate", str(UNTRAINED)
    )
    assert code == 2 and "cannot read the label file" in err
    code, _, err = _cli(capsys, "--folder", media, "--candidate", str(UNTRAINED))
    assert code == 2 and "--folder needs --labels" in err
    labels = str(labelled_folder / "labels.csv")
    code, _, err = _cli(capsys, "--folder", media, "--labels", labels, "--since", "7d")
    assert code == 2 and "read the store" in err
    missing = str(labelled_folder / "nope" / "model.json")
    code, _, err = _cli(capsys, "--folder", media, "--labels", labels, "--candidate", missing)
    assert code == 2 and f"candidate models: cannot read {missing}" in err
    both = [str(DEFAULT_ENSEMBLE), str(UNTRAINED)]  # an ensemble manifest must be named alone
    code, _, err = _cli(
        capsys, "--folder", media, "--labels", labels, "--primary", *both, "--candidate", str(UNTRAINED)
    )
    assert code == 2 and "primary models:" in err and "name it alone" in err


def test_media_without_a_face_count_as_unsure(
    labelled_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No face, no score: 0.5 for the metrics (the DFDC practice), so a real one costs log 2 to each list."""
    labels = labelled_folder / "noface.csv"
    labels.write_text("noface.mp4,real\n")
    media = str(labelled_folder / "media")
    code, out, _ = _cli(
        capsys, "--folder", media, "--labels", str(labels), "--candidate", str(UNTRAINED), "--json"
    )
    assert code == 0
    d = FolderDiff.model_validate(json.loads(out))
    for r in (d.primary, d.candidate):
        assert (r.n, r.no_face) == (1, 1)
        assert r.log_loss == pytest.approx(math.log(2), abs=1e-6)
