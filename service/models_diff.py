"""`dfguard models diff`: what would change if a candidate model list replaced the primary one.

Two sources of evidence:

- The store (`store_diff`): the `shadow_results` rows that shadow scoring wrote in a time window. The primary
  and shadow decisions of each medium make a 3 x 3 confusion matrix (rows primary, columns shadow); media
  whose decision differs are listed, newest first, up to a limit (the total is always reported). Counts are
  `GROUP BY` queries, so a week of traffic costs one indexed scan, not a row per medium in this process. The
  command reads only: it never migrates the schema, and says so when the store predates shadow results.
- A labelled folder (`folder_diff`): a team's own held-out media, scored by the served primary pipeline
  (`service.compose`, as `dfguard score` builds it) while the candidate judges the same classified faces as
  the live shadow does (`ShadowModels.judge`: its own crop margins and policy, none of the primary's
  `DFG_*` overrides), with AUC, log loss (the DFDC metric) and decision shares per list, and the files whose
  decision differs. Media that cannot be scored are reported with their error code and left out of every
  figure; an outage (the backend down) stops the command instead of failing every file.

A medium with no detected face has no score; for AUC and log loss it counts as 0.5, "unsure", which is what
DFDC entrants submitted when their detector found nothing (and what `training.evaluate` does): leaving such
media out would flatter a model whose detector misses hard cases. Their count is reported per list.

Labels: a CSV of `filename,label` (an optional header row; label 0/1 or real/fake, any case), or a DFDC
`metadata.json` (`{"name.mp4": {"label": "FAKE"|"REAL", ...}}`). File names are relative to the folder.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, inspect, select
from sqlalchemy.engine import Engine

from service.evaluation import DECISIONS, auc, confusion, decision_counts, log_loss
from service.schemas import Decision, ModelRef, ShadowSource, UsedThresholds
from service.store.tables import ShadowRow

if TYPE_CHECKING:
    from service.config import Settings
    from service.decision import Policy

__all__ = [
    "ConfusionMatrix",
    "DiffInputError",
    "FolderDiff",
    "ModelFilter",
    "StoreDiff",
    "StoreSchemaError",
    "Window",
    "folder_diff",
    "parse_time",
    "read_labels",
    "render_folder",
    "render_store",
    "store_diff",
]

NO_FACE_SCORE = 0.5  # see the module docstring
MEDIA_SUFFIXES = frozenset({".mp4", ".mov", ".webm", ".mkv", ".avi", ".jpg", ".jpeg", ".png", ".webp"})


class DiffInputError(ValueError):
    """Bad input from the operator (a time, a label file): reported as `invalid_request`, exit 2."""


class StoreSchemaError(RuntimeError):
    """The store has no `shadow_results` table (its schema predates shadow scoring)."""


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Window(_Out):
    """A half-open time window [since, until), UTC."""

    since: datetime
    until: datetime


class ConfusionMatrix(_Out):
    """Decision counts: `counts[i][j]` media that the primary decided `labels[i]`, the other `labels[j]`."""

    labels: tuple[Decision, ...] = DECISIONS
    counts: list[list[int]]

    @property
    def changed(self) -> int:
        return sum(c for i, row in enumerate(self.counts) for j, c in enumerate(row) if i != j)

    @property
    def stricter(self) -> int:
        """Media the other list would treat more severely (allow -> review/flag, review -> flag)."""
        return sum(c for i, row in enumerate(self.counts) for j, c in enumerate(row) if j > i)


def _share(k: int, n: int) -> float | None:
    return round(k / n, 6) if n else None


def _figure(v: float) -> float | None:
    """A metric for JSON: nan (undefined, e.g. one class absent) becomes null."""
    return None if math.isnan(v) else round(v, 6)


# --- the store -------------------------------------------------------------------------------------------

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str, now: datetime) -> datetime:
    """An ISO 8601 time (UTC when it names no offset) or a span back from `now`: `90m`, `24h`, `7d`, `2w`."""
    m = _RELATIVE.match(text)
    if m:
        try:
            return now - timedelta(**{_UNITS[m.group(2)]: float(m.group(1))})
        except OverflowError:  # a span beyond datetime's range (year 1 .. 9999)
            raise DiffInputError(f"{text!r} reaches back before the year 1") from None
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise DiffInputError(f"{text!r} is neither an ISO 8601 time nor a span like 24h or 7d") from None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).astimezone(UTC)


def window_from(since: str | None, until: str | None, now: datetime | None = None) -> Window:
    """The window the flags name; default: the 24 hours up to now."""
    now = now or datetime.now(UTC)
    end = parse_time(until, now) if until else now
    start = parse_time(since, now) if since else end - timedelta(hours=24)
    if start >= end:
        raise DiffInputError(f"empty window: since {start.isoformat()} is not before until {end.isoformat()}")
    return Window(since=start, until=end)


class ModelPair(_Out):
    primary: ModelRef
    shadow: ModelRef
    n: int


class ShadowChange(_Out):
    """One medium whose shadow decision differs from the primary's. `video_id` is null for gateway scoring."""

    created_at: datetime
    source: ShadowSource
    tenant: str
    video_id: str | None
    sha256: str
    primary_score: float | None
    primary_decision: Decision
    shadow_score: float | None
    shadow_decision: Decision


class ModelFilter(_Out):
    """`NAME[:VERSION]`: one model (list) by name, any version unless one is given."""

    name: str
    version: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelFilter:
        name, sep, version = text.strip().partition(":")
        if not name or (sep and not version):
            raise DiffInputError(f"{text!r}: expected NAME or NAME:VERSION")
        return cls(name=name, version=version or None)


class StoreDiff(_Out):
    mode: Literal["store"] = "store"
    window: Window
    tenant: str | None
    source: ShadowSource | None
    primary_model: ModelFilter | None = None
    shadow_model: ModelFilter | None = None
    n: int = Field(description="Shadow results in the window.")
    models: list[ModelPair] = Field(
        description="The (primary, shadow) model pairs seen, most frequent first."
    )
    primary_decisions: dict[Decision, int]
    shadow_decisions: dict[Decision, int]
    confusion: ConfusionMatrix = Field(description="Rows: the primary's decision; columns: the shadow's.")
    changed: int
    changed_share: float | None
    stricter: int = Field(description="Changes where the shadow is more severe than the primary.")
    items: list[ShadowChange] = Field(description="Changed media, newest first, at most `limit`.")
    limit: int
    warnings: list[str] = Field(
        default_factory=list,
        description="Caveats on the figures, e.g. several (primary, shadow) pairs counted in one matrix.",
    )


def _utc(t: datetime) -> datetime:
    # SQLite keeps DateTime(timezone=True) as naive text: the writers store UTC, so bind and read UTC.
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def store_diff(
    engine: Engine,
    window: Window,
    *,
    tenant: str | None = None,
    source: ShadowSource | None = None,
    primary_model: ModelFilter | None = None,
    shadow_model: ModelFilter | None = None,
    limit: int = 50,
) -> StoreDiff:
    """Primary vs shadow over the store's shadow results in `window`, optionally for one primary and one
    shadow model. A window holding several (primary, shadow) pairs mixes them in one matrix: unless both
    filters are given, that is reported in `warnings`.

    Raises:
        StoreSchemaError: the store has no shadow results table (run `dfguard db upgrade`).
        sqlalchemy.exc.SQLAlchemyError: the store cannot be reached or read.
    """
    if not inspect(engine).has_table(ShadowRow.__tablename__):
        raise StoreSchemaError("the store has no shadow_results table: run `dfguard db upgrade`")
    t = ShadowRow
    naive = engine.dialect.name == "sqlite"
    since, until = (_utc(w).replace(tzinfo=None) if naive else _utc(w) for w in (window.since, window.until))
    where = [t.created_at >= since, t.created_at < until]
    if tenant is not None:
        where.append(t.tenant == tenant)
    if source is not None:
        where.append(t.source == source)
    for f, name_col, version_col in (
        (primary_model, t.primary_model_name, t.primary_model_version),
        (shadow_model, t.shadow_model_name, t.shadow_model_version),
    ):
        if f is not None:
            where.append(name_col == f.name)
            if f.version is not None:
                where.append(version_col == f.version)
    n = func.count()
    with engine.connect() as conn:
        pairs = conn.execute(
            select(t.primary_decision, t.shadow_decision, n)
            .where(*where)
            .group_by(t.primary_decision, t.shadow_decision)
        ).all()
        models = conn.execute(
            select(
                t.primary_model_name, t.primary_model_version, t.shadow_model_name, t.shadow_model_version, n
            )
            .where(*where)
            .group_by(
                t.primary_model_name, t.primary_model_version, t.shadow_model_name, t.shadow_model_version
            )
            .order_by(n.desc())
        ).all()
        rows = conn.execute(
            select(
                t.created_at,
                t.source,
                t.tenant,
                t.video_id,
                t.sha256,
                t.primary_score,
                t.primary_decision,
                t.shadow_score,
                t.shadow_decision,
            )
            .where(*where, t.primary_decision != t.shadow_decision)
            .order_by(t.created_at.desc(), t.id.desc())
            .limit(limit)
        ).all()
    matrix = ConfusionMatrix(counts=confusion(((p, s) for p, s, _ in pairs), counts=(k for *_, k in pairs)))
    total = sum(k for *_, k in pairs)
    warnings = []
    if len(models) > 1:
        warnings.append(
            f"{len(models)} (primary, shadow) model pairs in the window are counted in one matrix: "
            "name one with --primary-model and --shadow-model NAME[:VERSION]"
        )
    return StoreDiff(
        window=window,
        tenant=tenant,
        source=source,
        primary_model=primary_model,
        shadow_model=shadow_model,
        warnings=warnings,
        n=total,
        models=[
            ModelPair(primary=ModelRef(name=a, version=b), shadow=ModelRef(name=c, version=d), n=k)
            for a, b, c, d, k in models
        ],
        primary_decisions=dict(zip(DECISIONS, map(sum, matrix.counts), strict=True)),
        shadow_decisions=dict(zip(DECISIONS, map(sum, zip(*matrix.counts, strict=True)), strict=True)),
        confusion=matrix,
        changed=matrix.changed,
        changed_share=_share(matrix.changed, total),
        stricter=matrix.stricter,
        items=[
            ShadowChange(
                created_at=_utc(r.created_at),
                source=r.source,
                tenant=r.tenant,
                video_id=r.video_id,
                sha256=r.sha256,
                primary_score=r.primary_score,
                primary_decision=r.primary_decision,
                shadow_score=r.shadow_score,
                shadow_decision=r.shadow_decision,
            )
            for r in rows
        ],
        limit=limit,
    )


# --- a labelled folder -----------------------------------------------------------------------------------

_LABEL_VALUES = {"0": 0, "1": 1, "real": 0, "fake": 1}


def _label(value: object, where: str) -> int:
    key = str(value).strip().lower()
    if key not in _LABEL_VALUES:
        raise DiffInputError(f"{where}: unknown label {value!r} (expected 0, 1, real or fake)")
    return _LABEL_VALUES[key]


def read_labels(path: Path) -> dict[str, int]:
    """File name (relative to the media folder) -> 1 fake / 0 real, from a CSV or a DFDC `metadata.json`."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise DiffInputError(f"cannot read the label file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise DiffInputError(f"the label file {path} is not UTF-8 text") from None
    labels: dict[str, int] = {}
    if path.suffix.lower() == ".json":
        try:
            meta = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DiffInputError(f"{path}: not JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise DiffInputError(f'{path}: expected a DFDC metadata object {{"name.mp4": {{"label": ...}}}}')
        for name, entry in meta.items():
            if not isinstance(entry, dict) or "label" not in entry:
                raise DiffInputError(f"{path}: entry {name!r} has no label")
            labels[name] = _label(entry["label"], f"{path}: {name}")
    else:
        for line, row in enumerate(csv.reader(text.splitlines()), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2:
                raise DiffInputError(f"{path}:{line}: expected filename,label")
            name, value = row[0].strip(), row[1]
            if line == 1 and value.strip().lower() == "label":
                continue  # the header row
            got = _label(value, f"{path}:{line}")
            if labels.setdefault(name, got) != got:
                raise DiffInputError(f"{path}:{line}: {name} is labelled both real and fake")
    if not labels:
        raise DiffInputError(f"{path}: no labelled files")
    return labels


class ListReport(_Out):
    """One model list on the labelled media that both lists scored."""

    manifests: list[str]
    model: ModelRef
    thresholds: UsedThresholds
    aggregation: str
    n: int
    n_fake: int
    no_face: int = Field(
        description=f"Media without a detected face (scored {NO_FACE_SCORE} for the metrics)."
    )
    auc: float | None = Field(description="ROC AUC, fake = positive; null when a class is absent.")
    log_loss: float | None = Field(description="Mean log loss, probabilities clipped to [1e-15, 1 - 1e-15].")
    decisions: dict[Decision, int]
    decision_shares: dict[Decision, float | None]
    decisions_by_label: dict[Literal["real", "fake"], dict[Decision, int]]


class FileChange(_Out):
    file: str
    label: Literal["real", "fake"]
    primary_score: float | None
    primary_decision: Decision
    candidate_score: float | None
    candidate_decision: Decision


class FailedFile(_Out):
    file: str
    code: str
    message: str


class FolderDiff(_Out):
    mode: Literal["folder"] = "folder"
    folder: str
    labels: str
    labelled: int = Field(description="Files the label file names.")
    unlabelled: int = Field(
        description="Media files in the folder the label file does not name (not scored)."
    )
    primary: ListReport
    candidate: ListReport
    confusion: ConfusionMatrix = Field(description="Rows: the primary's decision; columns: the candidate's.")
    changed: int
    changed_share: float | None
    stricter: int = Field(description="Changes where the candidate is more severe than the primary.")
    items: list[FileChange] = Field(description="Files whose decision differs, by name, at most `limit`.")
    limit: int
    failed: list[FailedFile] = Field(
        description="Media either list could not score; left out of every figure."
    )


def _list_report(
    model: ModelRef,
    policy: Policy,
    manifests: Sequence[Path],
    labels: list[int],
    outcomes: list[tuple[float | None, Decision]],
) -> ListReport:
    scores = [NO_FACE_SCORE if score is None else score for score, _ in outcomes]
    decisions = [d for _, d in outcomes]
    counts = decision_counts(decisions)
    t = policy.thresholds
    return ListReport(
        manifests=[str(m) for m in manifests],
        model=model,
        thresholds=UsedThresholds(review=t.review, flag=t.flag, source=policy.source),
        aggregation=policy.aggregation,
        n=len(outcomes),
        n_fake=sum(labels),
        no_face=sum(score is None for score, _ in outcomes),
        auc=_figure(auc(labels, scores)),
        log_loss=_figure(log_loss(labels, scores)),
        decisions=counts,
        decision_shares={d: _share(k, len(outcomes)) for d, k in counts.items()},
        decisions_by_label={
            name: decision_counts(d for d, y in zip(decisions, labels, strict=True) if y == value)
            for name, value in (("real", 0), ("fake", 1))
        },
    )


def _media_files(folder: Path) -> Iterable[str]:
    for p in folder.rglob("*"):
        if p.suffix.lower() in MEDIA_SUFFIXES and p.is_file():
            yield p.relative_to(folder).as_posix()


def _check_models(which: str, paths: Sequence[Path]) -> None:
    """Fail on a model list that cannot be served, before any model loads: the operator named it."""
    from service.models.manifest import load_manifest, resolve_models

    if not paths:
        raise DiffInputError(f"the {which} model list is empty")
    try:
        for member in resolve_models(list(paths)).member_paths:
            load_manifest(member)
    except OSError as exc:
        what = f"cannot read {exc.filename}: {exc.strerror}" if exc.filename else str(exc)
        raise DiffInputError(f"{which} models: {what}") from None
    except ValueError as exc:  # a malformed manifest (pydantic's ValidationError), an ensemble among others
        raise DiffInputError(f"{which} models: {exc}") from None


def folder_diff(
    folder: Path,
    labels_path: Path,
    primary: Sequence[Path],
    candidate: Sequence[Path],
    settings: Settings,
    *,
    limit: int = 50,
) -> FolderDiff:
    """Score every labelled file in `folder` with both model lists and compare them.

    `settings` supplies everything but the models (decoding limits, detector, backend, thresholds). One
    unbatched primary pipeline decodes and detects each file once; the candidate judges the faces the primary
    classified, as the live shadow does (`service.shadow.ShadowModels.judge`), so the `DFG_*_THRESHOLD`,
    `DFG_AGGREGATION` and `DFG_CROP_MARGIN` overrides apply to the primary only, as they do when served.

    Raises:
        DiffInputError: the folder or the label file is unusable.
        ModerationError: an outage (HTTP status 500 or more: the backend is down), naming the file it hit.
    """
    from service.compose import build_backend, build_pipeline
    from service.errors import ModerationError
    from service.models import resolve_models
    from service.shadow import ShadowModels
    from service.triton.repo import SHADOW_ENSEMBLE

    if not folder.is_dir():
        raise DiffInputError(f"{folder} is not a folder")
    for which, paths in (("primary", primary), ("candidate", candidate)):
        _check_models(which, paths)
    labels = read_labels(labels_path)
    lists = (list(primary), list(candidate))
    chosen = resolve_models(lists[1])
    pipeline = build_pipeline(settings.model_copy(update={"model_paths": lists[0]}), batching=False)
    try:
        backend = build_backend(settings, chosen, triton_ensemble=SHADOW_ENSEMBLE)
    except BaseException:
        pipeline.close()
        raise
    shadow = ShadowModels(backend.models, chosen.ensemble, sample=1.0)  # every file in its arm
    names: list[str] = []
    ys: list[int] = []
    results: list[tuple[tuple[float | None, Decision], tuple[float | None, Decision]]] = []
    failed = []
    try:
        for name in sorted(labels):
            try:
                scored = pipeline.score_file_with(folder / name, shadow.models_for)
                assert scored.extra is not None  # a sample of 1 cuts crops for every medium
                verdict = shadow.judge(backend, scored.extra)
            except ModerationError as exc:
                if exc.http_status >= 500:  # an outage, not this file's fault: every other file would fail
                    raise type(exc)(f"models diff stopped at {name}: {exc.message}") from exc
                failed.append(FailedFile(file=name, code=exc.code, message=exc.message))
                continue
            names.append(name)
            ys.append(labels[name])
            r = scored.result
            cand = None if verdict.score is None else round(verdict.score, 6)  # as a `ScoreResult` rounds
            results.append(((r.score, r.decision), (cand, verdict.decision)))
    finally:
        backend.close()
        pipeline.close()
    first, second = [r[0] for r in results], [r[1] for r in results]
    matrix = ConfusionMatrix(counts=confusion((a[1], b[1]) for a, b in results))
    changes = [
        FileChange(
            file=name,
            label="fake" if y else "real",
            primary_score=a[0],
            primary_decision=a[1],
            candidate_score=b[0],
            candidate_decision=b[1],
        )
        for name, y, (a, b) in zip(names, ys, results, strict=True)
        if a[1] != b[1]
    ]
    return FolderDiff(
        folder=str(folder),
        labels=str(labels_path),
        labelled=len(labels),
        unlabelled=sum(1 for f in _media_files(folder) if f not in labels),
        primary=_list_report(pipeline.model_ref, pipeline.policy, lists[0], ys, first),
        candidate=_list_report(shadow.model_ref, shadow.policy, lists[1], ys, second),
        confusion=matrix,
        changed=matrix.changed,
        changed_share=_share(matrix.changed, len(results)),
        stricter=matrix.stricter,
        items=changes[:limit],
        limit=limit,
        failed=failed,
    )


# --- tables ----------------------------------------------------------------------------------------------


def _score(v: float | None) -> str:
    return "  n/a" if v is None else f"{v:.3f}"


def _matrix_lines(m: ConfusionMatrix, row_name: str, col_name: str) -> list[str]:
    lines = [f"{row_name} \\ {col_name}".ljust(18) + "".join(f"{d:>8}" for d in m.labels)]
    for d, row in zip(m.labels, m.counts, strict=True):
        lines.append(f"  {d:<16}" + "".join(f"{c:>8}" for c in row))
    return lines


def _changed_line(changed: int, share: float | None, stricter: int) -> str:
    pct = "" if share is None else f" ({share:.1%})"
    return f"decision would change: {changed}{pct}; stricter {stricter}, more lenient {changed - stricter}"


def render_store(d: StoreDiff) -> str:
    w = d.window
    scope = "".join(
        [
            f", tenant {d.tenant}" if d.tenant else "",
            f", source {d.source}" if d.source else "",
            *(
                f", {which} {f.name}{'' if f.version is None else ':' + f.version}"
                for which, f in (("primary", d.primary_model), ("shadow", d.shadow_model))
                if f is not None
            ),
        ]
    )
    lines = [f"shadow results {w.since.isoformat()} .. {w.until.isoformat()}{scope}: {d.n}"]
    for p in d.models:
        lines.append(
            f"  primary {p.primary.name} {p.primary.version}"
            f" vs shadow {p.shadow.name} {p.shadow.version}: {p.n}"
        )
    lines += [f"warning: {text}" for text in d.warnings]
    if not d.n:
        return "\n".join(lines)
    lines += _matrix_lines(d.confusion, "primary", "shadow")
    lines.append(_changed_line(d.changed, d.changed_share, d.stricter))
    if d.items:
        shown = f" (newest {len(d.items)} of {d.changed})" if d.changed > len(d.items) else ""
        lines.append(f"changed{shown}:")
        lines.append(f"  {'created (UTC)':<20} {'tenant':<12} {'video / sha256':<34} {'primary':<15} shadow")
        for c in d.items:
            ident = c.video_id if c.video_id is not None else f"sha256:{c.sha256[:16]}"
            lines.append(
                f"  {c.created_at:%Y-%m-%d %H:%M:%S}  {c.tenant:<12} {ident:<34} "
                f"{c.primary_decision:<6} {_score(c.primary_score)}   "
                f"{c.shadow_decision:<6} {_score(c.shadow_score)}"
            )
    return "\n".join(lines)


def render_folder(d: FolderDiff) -> str:
    lines = [
        f"{d.folder}: {d.labelled} labelled, {d.primary.n} scored by both, {len(d.failed)} failed, "
        f"{d.unlabelled} unlabelled media not scored",
        f"  {'list':<10} {'model':<40} {'n':>4} {'fake':>5} {'AUC':>6} {'logloss':>8} {'noface':>6} "
        f"{'allow':>6} {'review':>6} {'flag':>6}",
    ]
    for name, r in (("primary", d.primary), ("candidate", d.candidate)):
        auc_s = "  n/a" if r.auc is None else f"{r.auc:.3f}"
        ll_s = "    n/a" if r.log_loss is None else f"{r.log_loss:.4f}"
        model = f"{r.model.name} {r.model.version}"[:40]
        lines.append(
            f"  {name:<10} {model:<40} {r.n:>4} {r.n_fake:>5} {auc_s:>6} {ll_s:>8} {r.no_face:>6} "
            + " ".join(f"{r.decisions[k]:>6}" for k in DECISIONS)
        )
    if d.primary.n:
        lines += _matrix_lines(d.confusion, "primary", "candidate")
        lines.append(_changed_line(d.changed, d.changed_share, d.stricter))
    if d.items:
        shown = f" (first {len(d.items)} of {d.changed})" if d.changed > len(d.items) else ""
        lines.append(f"changed{shown}:")
        for c in d.items:
            lines.append(
                f"  {c.file:<40} {c.label:<5} {c.primary_decision:<6} {_score(c.primary_score)}   "
                f"{c.candidate_decision:<6} {_score(c.candidate_score)}"
            )
    for f in d.failed:
        lines.append(f"failed: {f.file}: {f.code}: {f.message}")
    return "\n".join(lines)
