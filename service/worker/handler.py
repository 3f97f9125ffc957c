"""One upload event -> one emission: the flag event to produce, or a dead-letter record. No Kafka here.

Order of work, cheapest first: a decision already stored for (tenant, video_id) is re-emitted verbatim
(redelivery); byte-identical media (sha256) reuses a scored verdict after only the fetch (viral reposts);
after decoding, a near-duplicate of a *flagged* clip is flagged at once; everything else is scored.

Failures are classified once (`service.errors.classify`): the event's own fault keeps its documented outcome
(media that cannot be analysed is a `review` decision with the code as its reason; a bad event or a refused or
missing URI is dead-lettered). Any other failure first asks the health probes (`Health.recheck`): if a shared
dependency is down, the failure belongs to the outage, is not counted, and the event waits for the hold to end
and runs again, however long that takes. With every probe up it is this event's: a transient or dependency
fault is retried with exponential backoff up to `DFG_WORKER_MAX_ATTEMPTS`, then dead-lettered; an internal
error (a bug) is dead-lettered at once.

Shadow scoring and evidence: a scored (not reused) medium has the shadow's crops cut while its frames are
alive (in the shadow's arm), and its evidence captured (`DFG_EVIDENCE_FOR`). The capture is stored before the
decision, so the flag event links only evidence that exists. What follows the decision rides on its emission
(`Emission.follow_up`) and runs once the broker has acknowledged the flag event: the shadow's crops are
offered to the shadow lane (a `shadow_results` row beside the decision; never emitted) and the kept faces to
the overlay lane. Neither offer blocks.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from service.config import Settings
from service.errors import (
    Fault,
    MalformedEvent,
    MediaError,
    ModerationError,
    Outcome,
    SchemaViolation,
    StoreUnavailable,
    classify,
)
from service.events import (
    FlagAudio,
    FlagEvent,
    FlagFace,
    FlagFrame,
    FlagTimings,
    UploadEvent,
    flag_event_id,
    parse_flag_event,
)
from service.evidence.capture import CapturedEvidence, EvidenceFor
from service.evidence.document import AuditEntry
from service.evidence.keeper import EvidenceKeeper, Kept
from service.fingerprint import frame_hashes
from service.media import PendingMedia
from service.metrics import DEDUP_HITS, DEDUP_LOOKUPS, SHADOW_SKIPPED, WORKER_RETRIES
from service.pipeline import CutCrops, Pipeline
from service.schemas import ModelRef, ScoreResult
from service.shadow import ShadowLane
from service.sources import FetchPolicy, fetch_to_file_sync
from service.store import DecisionStore, NewDecision, StoredDecision
from service.worker.dependencies import LazyStore, inference_probe, object_store_probe, store_probe
from service.worker.health import Health

__all__ = ["Emission", "EventHandler", "flag_event_id", "top_frames"]

log = logging.getLogger(__name__)
_TOP_FRAMES = 3


@dataclass(frozen=True)
class Analysed:
    """One attempt's decision to store, and what to do once it is stored: the shadow's crops when the medium
    was scored and is in its arm; the evidence captured (with the verdict it explains) when the decision
    keeps evidence."""

    new: NewDecision
    cut: CutCrops | None = None
    evidence: CapturedEvidence | None = None
    result: ScoreResult | None = None


FollowUp = Callable[[bool], None]
"""Work that follows a decision once its flag event is acknowledged (True), or not produced (False: the worker
is stopping; the event is redelivered and re-emits the stored decision)."""


@dataclass(frozen=True)
class Emission:
    """What to produce for one consumed record before its offset may be committed."""

    kind: Literal["flag", "dlq"]
    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    decision: str | None = None  # flag emissions
    reason: str | None = None  # dlq emissions: the error code
    schema_version: int | None = None  # flag emissions: of `value` (what was stored, v1 or v2)
    uploaded_at: datetime | None = None
    follow_up: FollowUp | None = field(default=None, compare=False)  # flag emissions of a new decision


def top_frames(result: ScoreResult) -> list[FlagFrame]:
    """The frames a flag event reports: those with faces, highest face score first (worker and rescore)."""
    frames = [f for f in result.frames if f.faces]
    ranked = sorted(frames, key=lambda f: max(face.score for face in f.faces), reverse=True)[:_TOP_FRAMES]
    return [
        FlagFrame(
            index=f.index,
            time_s=f.time_s,
            score=max(face.score for face in f.faces),
            faces=[FlagFace(box=face.box, score=face.score) for face in f.faces],
        )
        for f in ranked
    ]


class EventHandler:
    """Thread-safe: the worker calls `handle` from several threads at once.

    `store` may be an open store or a `LazyStore` (opened once the database answers); `health` defaults to
    probes of this handler's inference backend and store. `shadow`: the shadow lane scored media are offered
    to; the handler closes it when `owns_shadow`. `evidence`: keeps the evidence of decisions that call for
    it (`DFG_EVIDENCE_FOR`); the handler closes it when `owns_evidence`."""

    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        store: DecisionStore | LazyStore,
        health: Health | None = None,
        *,
        shadow: ShadowLane | None = None,
        owns_shadow: bool = False,
        evidence: EvidenceKeeper | None = None,
        owns_evidence: bool = False,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.shadow = shadow
        self._owns_shadow = owns_shadow
        self.evidence = evidence
        self._owns_evidence = owns_evidence
        self.capture = EvidenceFor.from_settings(settings) if evidence is not None else None
        self.stores = store if isinstance(store, LazyStore) else LazyStore(store=store)
        self.policy = FetchPolicy.from_settings(settings)
        probes = [inference_probe(pipeline.backend), store_probe(self.stores)]
        if self.policy.s3 is not None:
            probes.append(object_store_probe(self.policy.s3))
        self.health = health or Health.from_settings(probes, settings)
        self.thresholds = pipeline.used_thresholds
        self.scratch = tempfile.mkdtemp(prefix="dfguard-worker-")  # fetched media, one file per event

    @property
    def store(self) -> DecisionStore:
        return self.stores.get()

    def close(self) -> None:
        self.health.stop()
        if self.shadow is not None and self._owns_shadow:
            self.shadow.close()
        if self.evidence is not None and self._owns_evidence:
            self.evidence.close()
        shutil.rmtree(self.scratch, ignore_errors=True)

    # --- entry point -------------------------------------------------------------------------------------

    def handle(self, value: bytes | None, stop: threading.Event) -> Emission:
        """Decide one record's value. Never raises for a bad event or a failure; raises `InterruptedError`
        when `stop` is set while the event waits (for a hold to end, or between retries): the caller leaves
        it uncommitted, so it is redelivered."""
        try:
            upload = self._parse(value)
        except ModerationError as exc:
            return self.dead_letter(value, None, classify(exc), exc.message)
        key = upload.video_id.encode()
        attempts = 0
        delay = self.settings.worker_retry_backoff_seconds
        while True:
            if not self.health.wait_up(stop):  # nothing starts during a hold
                raise InterruptedError("worker stopping while held")
            try:
                stored, follow_up = self._decide(upload)
                return Emission(
                    "flag",
                    stored.flag_event_json,
                    key,
                    decision=stored.record.decision,
                    uploaded_at=upload.uploaded_at,
                    schema_version=stored.schema_version,
                    follow_up=follow_up,
                )
            except InterruptedError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is classified, none escapes
                failure, error = classify(exc), exc
            if failure.fault is Fault.EVENT:
                return self.dead_letter(value, key, failure, _message(error))
            WORKER_RETRIES.labels(reason=failure.code).inc()
            if not self.health.recheck():
                log.warning(
                    "event %s: %s during a hold (%s): retried after it, not counted",
                    upload.event_id,
                    failure.code,
                    ", ".join(f"{d} down" for d in sorted(self.health.down())),
                )
                continue
            if failure.fault is Fault.INTERNAL:
                log.error("event %s: internal error", upload.event_id, exc_info=error)
                return self.dead_letter(value, key, failure, _message(error))
            attempts += 1
            if attempts >= self.settings.worker_max_attempts:
                message = f"{_message(error)} (after {attempts} attempts)"
                return self.dead_letter(value, key, failure, message)
            log.warning(
                "event %s: %s: %s; retry %d in %.1f s", upload.event_id, failure.code, error, attempts, delay
            )
            if stop.wait(delay):
                raise InterruptedError("worker stopping during a retry wait") from error
            delay = min(delay * 2, self.settings.worker_retry_backoff_max_seconds)

    @staticmethod
    def _parse(value: bytes | None) -> UploadEvent:
        if value is None:
            raise MalformedEvent("the record has no value (tombstone)")
        try:
            data = json.loads(value)
        except (
            UnicodeDecodeError,
            json.JSONDecodeError,
            RecursionError,
        ) as exc:  # RecursionError: deep nesting
            raise MalformedEvent(f"not JSON: {exc}") from exc
        try:
            return UploadEvent.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors()
            )
            raise SchemaViolation(problems[:2000]) from exc

    def dead_letter(self, value: bytes | None, key: bytes | None, failure: Outcome, message: str) -> Emission:
        headers = [
            ("dfg-error-code", failure.code.encode()),
            ("dfg-error-fault", str(failure.fault).encode()),
            ("dfg-error-message", message[:4000].encode()),
        ]
        return Emission("dlq", value or b"", key, headers, reason=failure.code)

    # --- one attempt ---------------------------------------------------------------------------------------

    def _decide(self, upload: UploadEvent) -> tuple[StoredDecision, FollowUp | None]:
        """The stored decision, and what follows its flag event (the shadow's and the overlays' work)."""
        try:
            store = self.stores.get()
            existing = store.get(upload.tenant, upload.video_id)
            if existing is not None:
                return existing, None  # a redelivery: the same decision, the same bytes
            fd, name = tempfile.mkstemp(prefix="dfguard-event-", dir=self.scratch)
            os.close(fd)
            try:
                done = self._analyse(upload, Path(name), store)
                new, kept = self._save_evidence(upload, done)
                try:
                    stored, created = store.put(new)
                except BaseException:
                    if kept is not None:  # no decision to explain: the capture must not outlive it
                        self._drop_capture(upload, store)
                    raise
            finally:
                Path(name).unlink(missing_ok=True)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"decision store: {type(exc).__name__}: {exc}") from exc
        # Another worker that stored the decision first has its own shadow row; the capture stored here
        # replaced its capture of the same video, so this one's overlays are the page's.
        cut = done.cut if created else None
        if kept is None and cut is None:
            return stored, None
        evidence = self.evidence

        def follow_up(produced: bool) -> None:
            if kept is not None and evidence is not None:
                evidence.follow_up(kept, produced)
            if cut is not None:
                if produced:
                    self._offer_shadow(upload, stored, cut)
                else:  # stopping: the redelivery re-emits the stored decision and scores nothing
                    SHADOW_SKIPPED.labels(reason="shutdown").inc()

        return stored, follow_up

    def _drop_capture(self, upload: UploadEvent, store: DecisionStore) -> None:
        """Erase the capture of a decision that could not be stored (best effort: a store that refused the
        decision may refuse this too; the page then stays hidden, as it has no decision, until it expires)."""
        try:
            store.erase_evidence(upload.tenant, "decision", upload.video_id)
        except SQLAlchemyError as exc:
            log.warning("event %s: capture of an unstored decision not erased: %s", upload.event_id, exc)

    def _save_evidence(self, upload: UploadEvent, done: Analysed) -> tuple[NewDecision, Kept | None]:
        """Store the decision's evidence before the decision, stamped with the decision's time (its link's
        expiry was fixed from it). Not kept (store down, over quota): the decision's flag event carries no
        link, rather than one to nothing."""
        new = done.new
        if done.evidence is None or done.result is None or self.evidence is None:
            return new, None
        at = new.flag.decided_at
        kept = self.evidence.save(
            done.evidence,
            done.result,
            subject="decision",
            subject_id=upload.video_id,
            tenant=upload.tenant,
            captured_at=at,
            audit=[
                AuditEntry(at=upload.uploaded_at, event="uploaded", detail=f"event {upload.event_id}"),
                AuditEntry(at=at, event="decided", detail=f"{done.result.decision} by the worker"),
            ],
        )
        if kept is None and new.flag.evidence_url is not None:
            new = dataclasses.replace(new, flag=new.flag.model_copy(update={"evidence_url": None}))
        return new, kept

    def _offer_shadow(self, upload: UploadEvent, stored: StoredDecision, cut: CutCrops) -> None:
        """Hand the shadow's crops to its lane (never blocks: a full lane skips and counts)."""
        record = stored.record
        assert self.shadow is not None and record.sha256 is not None  # scored media have a digest
        self.shadow.offer_scored(
            cut,
            record,
            source="worker",
            tenant=upload.tenant,
            sha256=record.sha256,
            video_id=upload.video_id,
            decision_id=stored.id,
        )

    def _analyse(self, upload: UploadEvent, dest: Path, store: DecisionStore) -> Analysed:
        """The decision to store, and what follows it (`Analysed`)."""
        t0 = time.perf_counter()
        try:
            fetched = fetch_to_file_sync(upload.uri, dest, self.policy, tenant=upload.tenant)
        except MediaError as exc:
            if not exc.review:
                raise
            # e.g. over the size limit: user content, a person should look
            return Analysed(self._media_error(upload, exc, None, {"fetch": _ms(t0), "total": _ms(t0)}))
        fetch_ms = _ms(t0)

        if self.settings.dedup_exact:
            DEDUP_LOOKUPS.inc()
            original = store.find_exact(fetched.sha256, upload.tenant)
            if original is not None:
                DEDUP_HITS.labels(kind="exact").inc()
                same = original.tenant == upload.tenant
                mark = f"duplicate_of:{original.record.video_id}" if same else "duplicate"
                reasons = [mark, *original.record.reasons]
                return Analysed(
                    self._reuse(upload, original, "duplicate", reasons, fetched.sha256, fetch_ms, t0, store)
                )

        t1 = time.perf_counter()
        pending = None
        try:
            pending = PendingMedia(fetched.path, self.settings)
            media = pending.result()
            hashes = frame_hashes(media.frames, self.settings.near_duplicate_frames)
            near = store.find_near_flagged(
                hashes, self.settings.near_duplicate_max_distance, self.settings.near_duplicate_min_fraction
            )
            if near is not None:
                DEDUP_HITS.labels(kind="near_duplicate_flagged").inc()
                same = near.tenant == upload.tenant
                mark = (
                    f"near_duplicate_of_flagged:{near.record.video_id}"
                    if same
                    else "near_duplicate_of_flagged"
                )
                reused = self._reuse(
                    upload, near, "near_duplicate", [mark], fetched.sha256, fetch_ms, t0, store
                )
                return Analysed(reused)
            extra = self.shadow.models_for if self.shadow is not None else None
            scored = self.pipeline.score_media_with(media, fetched.sha256, t1, extra, self.capture)
            result = scored.result
        except MediaError as exc:
            if not exc.review:
                raise
            spent = {"fetch": fetch_ms, "decode": _ms(t1), "total": _ms(t0)}
            return Analysed(self._media_error(upload, exc, fetched.sha256, spent))
        finally:
            if pending is not None:
                pending.close()
        t = result.timings_ms
        timings = FlagTimings(
            fetch=fetch_ms, decode=t.decode, detect=t.detect, classify=t.classify, total=_ms(t0)
        )
        decided_at = datetime.now(UTC)
        link = None
        if scored.evidence is not None and self.evidence is not None:  # fixed before the decision is stored
            link = self.evidence.link("decision", upload.video_id, upload.tenant, decided_at)
        flag = self._flag(
            upload,
            result.decision,
            result.score,
            result.reasons,
            top_frames(result),
            timings,
            decided_at=decided_at,
            evidence_url=link,
            audio=FlagAudio.of(result.audio),
        )
        new = NewDecision(
            tenant=upload.tenant,
            origin="scored",
            thresholds=self.thresholds,
            aggregation=self.pipeline.policy.aggregation,
            sha256=fetched.sha256,
            flag=flag,
            frame_hashes=hashes,
            source_uri=upload.uri,
            schema_version=self.settings.flags_schema_version,
        )
        return Analysed(new, scored.extra, scored.evidence, result)

    def _repost_link(self, upload: UploadEvent, original: StoredDecision, store: DecisionStore) -> str | None:
        """A repost of the same tenant's media shows its original's evidence (the page follows the reason's
        id): its link, for the repost's own id, lasts as long as that evidence. None across tenants."""
        if self.evidence is None or not self.evidence.links or original.tenant != upload.tenant:
            return None  # no link to make: no store read on the repost path
        until = store.evidence_expiry(upload.tenant, "decision", original.record.video_id)
        if until is None:
            return None
        return self.evidence.link_until("decision", upload.video_id, upload.tenant, until)

    def _reuse(
        self,
        upload: UploadEvent,
        original: StoredDecision,
        origin: Literal["duplicate", "near_duplicate"],
        reasons: list[str],
        sha256: str,
        fetch_ms: float,
        t0: float,
        store: DecisionStore,
    ) -> NewDecision:
        source = parse_flag_event(original.flag_event_json)  # its latest revision
        flag = self._flag(
            upload,
            original.record.decision,
            original.record.score,
            reasons,
            list(source.top_frames),
            FlagTimings(fetch=fetch_ms, total=_ms(t0)),
            model=source.model,
            evidence_url=self._repost_link(upload, original, store),
            audio=source.audio if origin == "duplicate" else None,  # near: other bytes, its own sound
        )
        return NewDecision(
            tenant=upload.tenant,
            origin=origin,
            thresholds=original.record.thresholds,
            aggregation=original.record.aggregation,
            sha256=sha256,
            flag=flag,
            source_uri=upload.uri,
            schema_version=self.settings.flags_schema_version,
        )

    def _media_error(
        self, upload: UploadEvent, exc: MediaError, sha256: str | None, timings: dict[str, float]
    ) -> NewDecision:
        flag = self._flag(upload, "review", None, [exc.code], [], FlagTimings(**timings))
        return NewDecision(
            tenant=upload.tenant,
            origin="media_error",
            thresholds=self.thresholds,
            aggregation=self.pipeline.policy.aggregation,
            sha256=sha256,
            flag=flag,
            source_uri=upload.uri,
            schema_version=self.settings.flags_schema_version,
        )

    def _flag(
        self,
        upload: UploadEvent,
        decision: Literal["allow", "review", "flag"],
        score: float | None,
        reasons: list[str],
        top_frames: list[FlagFrame],
        timings: FlagTimings,
        model: ModelRef | None = None,
        *,
        decided_at: datetime | None = None,
        evidence_url: str | None = None,
        audio: FlagAudio | None = None,
    ) -> FlagEvent:
        return FlagEvent(
            event_id=flag_event_id(upload.tenant, upload.video_id),
            video_id=upload.video_id,
            tenant=upload.tenant,
            decision=decision,
            score=score,
            reasons=reasons,
            model=model or self.pipeline.model_ref,
            top_frames=top_frames,
            timings_ms=timings,
            decided_at=decided_at or datetime.now(UTC),
            source_event_id=upload.event_id,
            evidence_url=evidence_url,
            audio=audio,
        )


def _message(exc: BaseException) -> str:
    if isinstance(exc, ModerationError):
        return exc.message
    return f"unexpected {type(exc).__name__}: {exc}"


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 2)
