"""`dfguard rescore`: re-decide stored worker decisions with the current models and thresholds.

Each selected decision's medium is fetched again from the URI its upload named (`decisions.source_uri`, with
the worker's fetch policy), decoded and decided as the worker would decide it now: a near-duplicate of a
flagged clip (not itself) is flagged, anything else is scored. When the decision (allow / review / flag)
differs from the stored one, the store records the next revision of it, and of the exact reposts that
reused its verdict, in one transaction (`service/store/revisions.py`), and their flag events (schema v2,
`revision` and `supersedes` set) are produced keyed by video_id with the worker's headers, acks=all. A
revision is marked emitted only once the broker acknowledged it.

Restartable: a run first produces the revisions an interrupted run stored but did not get acknowledged
(the outbox, which every worker also drains periodically: `service/worker/outbox.py`; a crash in between
produces one revision's bytes twice at most, never a second revision); decisions already
decided by the current models, thresholds and aggregation are skipped, so revised ones are not redone.
Unchanged decisions are re-scored again by a rerun (nothing records them).

Not re-decided: decisions without a source URI (stored before it was kept; reported), media that cannot be
fetched or analysed now (reported with the error code; the stored decision stands: a transient decode
failure must not overturn a verdict), media whose bytes are no longer those decided (the sha256 differs:
the object behind the URI was replaced, and a verdict about other bytes must not be stored; reported as
`media_changed`), exact reposts (they follow the video whose verdict they reused; one that a live worker
stored with the verdict read just before its original's revision committed is revised to follow it).
Dependency failures (backend, store, broker) stop the run; rerun it when they are back.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from kafka.errors import KafkaError
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError

from service.config import Settings
from service.errors import Fault, ModerationError, classify
from service.events import FlagAudio, FlagTimings
from service.fingerprint import frame_hashes
from service.media import PendingMedia
from service.pipeline import Pipeline
from service.schemas import Decision, ModelRef, UsedThresholds
from service.sources import FetchPolicy, fetch_to_file_sync
from service.store import DecisionStore
from service.store.revisions import Candidate, Redecision, Revised, Selection, StaleRevision
from service.worker.handler import top_frames
from service.worker.outbox import produce_acked

__all__ = [
    "MediaChanged",
    "RescoreRefused",
    "RescoreReport",
    "Rescorer",
    "check_settings",
    "parse_model",
    "parse_when",
]

log = logging.getLogger(__name__)
_LISTED = 1000  # items listed by name in a report (the counts are always complete)
_T = TypeVar("_T")


class MediaChanged(Exception):
    """The URI now serves other bytes than the stored decision was about (sha256 differs)."""


class RescoreRefused(ValueError):
    """The run cannot start as configured (e.g. flag events in schema version 1, which has no revisions)."""


class VideoRef(BaseModel):
    tenant: str
    video_id: str


class Problem(VideoRef):
    code: str
    message: str


class Change(VideoRef):
    """A new revision (emitted unless a dry run, where `revision` and `event_id` are what it would be)."""

    before: Decision
    after: Decision
    revision: int
    event_id: str | None = None
    supersedes: str | None = None
    repost_of: str | None = Field(None, description="The video whose re-decision this exact repost follows.")


class RescoreReport(BaseModel):
    dry_run: bool
    model: ModelRef
    thresholds: UsedThresholds
    aggregation: str
    pending: int = Field(
        0,
        description="Revisions stored and not acknowledged by the broker when the run started (the outbox).",
    )
    resumed: int = Field(0, description="Revisions an interrupted run stored, produced first.")
    selected: int = 0
    current: int = Field(0, description="Already decided by these models and thresholds: skipped.")
    follows_original: int = Field(0, description="Exact reposts: revised with the video they reused.")
    skipped_no_uri: int = 0
    missing_media: int = Field(0, description="Media not fetched or analysed now; the decision stands.")
    media_changed: int = Field(
        0, description="The URI serves other bytes (sha256) than were decided: skipped, the decision stands."
    )
    failed: int = Field(0, description="Re-decisions that failed (listed in `failures`): the run exits 1.")
    last_id: int | None = Field(
        None, description="Id of the last decision selected: pass it as --after-id to continue after it."
    )
    rescored: int = 0
    changed: int = 0
    unchanged: int = 0
    emitted: int = Field(0, description="Flag events produced and acknowledged (reposts' and resumed too).")
    changes: list[Change] = Field(default_factory=list)
    no_uri: list[VideoRef] = Field(default_factory=list)
    missing: list[Problem] = Field(default_factory=list)
    changed_media: list[Problem] = Field(default_factory=list)
    failures: list[Problem] = Field(default_factory=list)


def check_settings(settings: Settings) -> None:
    """Raise `RescoreRefused` where a re-score cannot run as configured."""
    if settings.flags_schema_version == 1:
        raise RescoreRefused(
            "DFG_FLAGS_SCHEMA_VERSION=1: flag events of schema version 1 cannot carry revisions; "
            "re-scoring needs version 2 (see docs/worker.md)"
        )


def parse_when(text: str | None) -> datetime | None:
    """An RFC 3339 / ISO 8601 time; UTC when it names no zone. Raises `ValueError` naming the text."""
    if text is None:
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not an ISO 8601 time: {text!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def parse_model(text: str | None) -> tuple[str | None, str | None]:
    """`NAME[:VERSION]` -> (name, version)."""
    if not text:
        return None, None
    name, _, version = text.partition(":")
    return name, version or None


def _listed(items: list[_T], item: _T) -> None:
    if len(items) < _LISTED:
        items.append(item)


class Rescorer:
    """One `dfguard rescore` run over one store, pipeline and (unless a dry run) producer."""

    def __init__(
        self, settings: Settings, pipeline: Pipeline, store: DecisionStore, *, dry_run: bool
    ) -> None:
        check_settings(settings)
        self.s = settings
        self.pipeline = pipeline
        self.store = store
        self.dry_run = dry_run
        self.policy = FetchPolicy.from_settings(settings)
        self.thresholds = pipeline.used_thresholds
        self.report = RescoreReport(
            dry_run=dry_run,
            model=pipeline.model_ref,
            thresholds=self.thresholds,
            aggregation=pipeline.policy.aggregation,
        )
        self._producer = None
        if not dry_run:
            from service.worker.runner import durable_producer  # Kafka only where something is produced

            self._producer = durable_producer(settings, "rescore")

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=10)

    def run(self, selection: Selection) -> RescoreReport:
        """Produce what an interrupted run left, then re-decide every selected decision."""
        self.report.pending = self.store.pending_count()
        if not self.dry_run and self.report.pending:
            log.info("rescore: producing %d revisions an earlier run left", self.report.pending)
            producer = self._producer
            assert producer is not None
            resumed = self.store.drain_pending(
                lambda batch: self._count(
                    produce_acked(producer, self.s, ((p.video_id, p.value) for p in batch))
                )
            )
            self.report.resumed = resumed
        scratch = tempfile.mkdtemp(prefix="dfguard-rescore-")
        try:
            for candidate in self.store.candidates(selection):
                self._one(candidate, Path(scratch))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return self.report

    def _is_current(self, c: Candidate) -> bool:
        return (
            c.model == self.pipeline.model_ref
            and (c.thresholds.review, c.thresholds.flag) == (self.thresholds.review, self.thresholds.flag)
            and c.aggregation == self.pipeline.policy.aggregation
        )

    def _one(self, c: Candidate, scratch: Path) -> None:
        r = self.report
        r.selected += 1
        r.last_id = c.id  # whatever becomes of it, a next batch (--after-id) starts past it
        ref = VideoRef(tenant=c.tenant, video_id=c.video_id)
        if c.origin == "duplicate":
            self._follow(c)
            return
        if self._is_current(c):
            r.current += 1
            return
        if c.source_uri is None:
            r.skipped_no_uri += 1
            _listed(r.no_uri, ref)
            return
        try:
            new = self._redecide(c, scratch / f"{c.id}.media")
        except MediaChanged as exc:
            r.media_changed += 1
            _listed(
                r.changed_media,
                Problem(tenant=c.tenant, video_id=c.video_id, code="media_changed", message=str(exc)),
            )
            log.warning("rescore: %s/%s: %s", c.tenant, c.video_id, exc)
            return
        except (SQLAlchemyError, KafkaError):
            raise  # the store or the broker is down: stop (a rerun resumes)
        except ModerationError as exc:
            failure = classify(exc)
            if failure.fault is Fault.EVENT:  # the medium's own: gone, refused, undecodable
                r.missing_media += 1
                _listed(
                    r.missing,
                    Problem(tenant=c.tenant, video_id=c.video_id, code=failure.code, message=exc.message),
                )
                log.warning("rescore: %s/%s: %s", c.tenant, c.video_id, failure.code)
                return
            if failure.fault is Fault.TRANSIENT:
                self._fail(c, failure.code, exc.message)
                return
            raise  # a dependency is down or a bug: stop (a rerun resumes)
        except Exception as exc:  # noqa: BLE001 - one decision's own failure (e.g. OSError): report, go on
            message = f"{type(exc).__name__}: {exc}"
            self._fail(c, "internal_error", message)
            log.warning("rescore: %s/%s failed: %s", c.tenant, c.video_id, message)
            return
        r.rescored += 1
        if new.decision == c.decision:
            r.unchanged += 1
            return
        r.changed += 1
        if self.dry_run:
            self._report_planned(c, new.decision)
            return
        try:
            revised = self.store.revise(c.id, c.revision, new)
        except StaleRevision as exc:  # another run revised it meanwhile: its revision stands
            self._fail(c, "stale_revision", str(exc))
            return
        self._report_changes(c, revised)
        self._emit(revised)

    def _follow(self, c: Candidate) -> None:
        """An exact repost is revised with its original; one a live worker stored with the verdict it read
        just before the original's revision committed lags it, and is revised to follow it here."""
        r = self.report
        lag = self.store.lagging_original(c.id)
        if lag is None:
            r.follows_original += 1
            return
        original, decision = lag
        r.changed += 1
        if self.dry_run:
            self._report_planned(c, decision, repost_of=original)
            return
        try:
            revised = self.store.follow_original(c.id, c.revision)
        except StaleRevision as exc:
            self._fail(c, "stale_revision", str(exc))
            return
        self._report_changes(c, revised, original=original)
        if revised:
            self._emit(revised)

    def _fail(self, c: Candidate, code: str, message: str) -> None:
        """Count and list one decision this run could not re-decide (the run goes on)."""
        self.report.failed += 1
        _listed(
            self.report.failures, Problem(tenant=c.tenant, video_id=c.video_id, code=code, message=message)
        )

    def _report_planned(self, c: Candidate, after: Decision, repost_of: str | None = None) -> None:
        """A dry run's change: the revision it would make, not made."""
        change = Change(
            tenant=c.tenant,
            video_id=c.video_id,
            before=c.decision,
            after=after,
            revision=c.revision + 1,
            repost_of=repost_of,
        )
        _listed(self.report.changes, change)

    def _report_changes(self, c: Candidate, revised: list[Revised], original: str | None = None) -> None:
        """The revisions made for `c`: `c`'s own, then its reposts' (`repost_of` `c`); with `original`, `c`
        is a repost that followed that original's revision."""
        for i, v in enumerate(revised):
            change = Change(
                tenant=v.tenant,
                video_id=v.video_id,
                before=c.decision,  # a repost carried its original's verdict
                after=v.event.decision,
                revision=v.event.revision,
                event_id=v.event.event_id,
                supersedes=v.event.supersedes,
                repost_of=original if original is not None else (c.video_id if i else None),
            )
            _listed(self.report.changes, change)
            log.info(
                "rescore: %s/%s revision %d: %s -> %s",
                v.tenant,
                v.video_id,
                v.event.revision,
                c.decision,
                v.event.decision,
            )

    def _redecide(self, c: Candidate, dest: Path) -> Redecision:
        """Fetch, decode and decide `c`'s medium as the worker would now. Raises `ModerationError`, or
        `MediaChanged` when the bytes are not those the stored decision was about."""
        assert c.source_uri is not None
        t0 = time.perf_counter()
        try:
            fetched = fetch_to_file_sync(c.source_uri, dest, self.policy, tenant=c.tenant)
            if c.sha256 is not None and fetched.sha256 != c.sha256:
                raise MediaChanged(f"sha256 {fetched.sha256[:12]}… now, {c.sha256[:12]}… when decided")
            fetch_ms = _ms(t0)
            t1 = time.perf_counter()
            pending = PendingMedia(fetched.path, self.s)
            try:
                media = pending.result()
                hashes = frame_hashes(media.frames, self.s.near_duplicate_frames)
                near = self.store.find_near_flagged(
                    hashes,
                    self.s.near_duplicate_max_distance,
                    self.s.near_duplicate_min_fraction,
                    exclude=c.id,
                )
                if near is not None:
                    same = near.tenant == c.tenant
                    mark = (
                        f"near_duplicate_of_flagged:{near.record.video_id}"
                        if same
                        else "near_duplicate_of_flagged"
                    )
                    return Redecision(
                        decision=near.record.decision,
                        score=near.record.score,
                        reasons=[mark],
                        origin="near_duplicate",
                        model=near.record.model,
                        thresholds=near.record.thresholds,
                        aggregation=near.record.aggregation,
                        top_frames=[],
                        timings=FlagTimings(fetch=fetch_ms, total=_ms(t0)),
                        frame_hashes=[],  # the worker keeps hashes of scored media only
                    )
                result = self.pipeline.score_media(media, fetched.sha256, t1)
            finally:
                pending.close()
        finally:
            dest.unlink(missing_ok=True)
        t = result.timings_ms
        return Redecision(
            decision=result.decision,
            score=result.score,
            reasons=list(result.reasons),
            origin="scored",
            model=self.pipeline.model_ref,
            thresholds=self.thresholds,
            aggregation=self.pipeline.policy.aggregation,
            top_frames=top_frames(result),
            timings=FlagTimings(
                fetch=fetch_ms, decode=t.decode, detect=t.detect, classify=t.classify, total=_ms(t0)
            ),
            frame_hashes=hashes,
            audio=FlagAudio.of(result.audio),
        )

    def _count(self, produced: int) -> None:
        self.report.emitted += produced

    def _emit(self, revised: list[Revised]) -> None:
        """Produce a re-decision's flag events, wait for the broker's acknowledgement, then mark them emitted.

        Raises a `KafkaError` if the broker does not acknowledge: the revisions stay pending for a worker's
        outbox pass or a rerun."""
        assert self._producer is not None
        self._count(produce_acked(self._producer, self.s, ((v.video_id, v.value) for v in revised)))
        self.store.mark_emitted([v.id for v in revised])


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 2)
