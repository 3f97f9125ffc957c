"""One upload event -> one outcome: the flag event to produce, or a dead-letter record. No Kafka here.

Order of work, cheapest first: a decision already stored for (tenant, video_id) is re-emitted verbatim
(redelivery); byte-identical media (sha256) reuses a scored verdict after only the fetch (viral reposts);
after decoding, a near-duplicate of a *flagged* clip is flagged at once; everything else is scored. Transient
faults (fetch, backend, store) are retried with exponential backoff, then dead-lettered; media that cannot be
analysed is user content and gets a `review` decision with the error code as its reason.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from service.config import Settings
from service.errors import (
    BackendUnavailable,
    DeadlineExceeded,
    FetchFailed,
    MediaError,
    MediaNotFound,
    ModerationError,
    OverCapacity,
)
from service.events import FlagEvent, FlagFace, FlagFrame, FlagTimings, UploadEvent
from service.fingerprint import frame_hashes
from service.media import PendingMedia
from service.metrics import DEDUP_HITS, DEDUP_LOOKUPS, WORKER_RETRIES
from service.pipeline import Pipeline
from service.schemas import ModelRef, ScoreResult
from service.sources import FetchPolicy, fetch_to_file_sync
from service.store import DecisionStore, NewDecision, StoredDecision

__all__ = ["EventHandler", "Outcome", "flag_event_id"]

log = logging.getLogger(__name__)
_NAMESPACE = uuid.UUID("6c1f3e0e-5d0a-4f43-9a51-6466677561a1")
_TOP_FRAMES = 3


@dataclass(frozen=True)
class Outcome:
    """What to produce for one consumed record before its offset may be committed."""

    kind: Literal["flag", "dlq"]
    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    decision: str | None = None  # flag outcomes
    reason: str | None = None  # dlq outcomes: the error code
    uploaded_at: datetime | None = None


class _Transient(Exception):
    """A fault that may pass: retried, then dead-lettered with `code`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class _DeadLetter(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def flag_event_id(tenant: str, video_id: str) -> str:
    """Stable per video: every emission of a video's decision carries the same id."""
    return str(uuid.uuid5(_NAMESPACE, f"{tenant}/{video_id}"))


def _top_frames(result: ScoreResult) -> list[FlagFrame]:
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
    """Thread-safe: the worker calls `handle` from several threads at once."""

    def __init__(self, settings: Settings, pipeline: Pipeline, store: DecisionStore) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.store = store
        self.policy = FetchPolicy.from_settings(settings)
        self.thresholds = pipeline.used_thresholds
        self.scratch = tempfile.mkdtemp(prefix="dfguard-worker-")  # fetched media, one file per event

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)

    # --- entry point -------------------------------------------------------------------------------------

    def handle(self, value: bytes | None, stop: threading.Event) -> Outcome:
        """Decide one record's value. Never raises for bad input; `stop` cuts retry waits short (then the
        last transient error is returned as a dead letter only if every attempt was used)."""
        try:
            upload = self._parse(value)
        except _DeadLetter as exc:
            return self.dead_letter(value, None, exc.code, str(exc))
        key = upload.video_id.encode()
        attempts = self.settings.worker_max_attempts
        for attempt in range(1, attempts + 1):
            try:
                stored = self._decide(upload)
                return Outcome(
                    "flag",
                    stored.flag_event_json,
                    key,
                    decision=stored.record.decision,
                    uploaded_at=upload.uploaded_at,
                )
            except _DeadLetter as exc:
                return self.dead_letter(value, key, exc.code, str(exc))
            except _Transient as exc:
                WORKER_RETRIES.labels(reason=exc.code).inc()
                if attempt == attempts:
                    return self.dead_letter(value, key, exc.code, f"{exc} (after {attempts} attempts)")
                delay = min(
                    self.settings.worker_retry_backoff_seconds * 2 ** (attempt - 1),
                    self.settings.worker_retry_backoff_max_seconds,
                )
                log.warning(
                    "event %s: %s: %s; retry %d in %.1f s", upload.event_id, exc.code, exc, attempt, delay
                )
                if stop.wait(delay):
                    raise InterruptedError("worker stopping during a retry wait") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _parse(value: bytes | None) -> UploadEvent:
        if value is None:
            raise _DeadLetter("malformed_event", "the record has no value (tombstone)")
        try:
            data = json.loads(value)
        except (
            UnicodeDecodeError,
            json.JSONDecodeError,
            RecursionError,
        ) as exc:  # RecursionError: deep nesting
            raise _DeadLetter("malformed_event", f"not JSON: {exc}") from exc
        try:
            return UploadEvent.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors()
            )
            raise _DeadLetter("schema_violation", problems[:2000]) from exc

    def dead_letter(self, value: bytes | None, key: bytes | None, code: str, message: str) -> Outcome:
        headers = [("dfg-error-code", code.encode()), ("dfg-error-message", message[:4000].encode())]
        return Outcome("dlq", value or b"", key, headers, reason=code)

    # --- one attempt ---------------------------------------------------------------------------------------

    def _decide(self, upload: UploadEvent) -> StoredDecision:
        try:
            existing = self.store.get(upload.tenant, upload.video_id)
            if existing is not None:
                return existing  # a redelivery: the same decision, the same bytes
            fd, name = tempfile.mkstemp(prefix="dfguard-event-", dir=self.scratch)
            os.close(fd)
            try:
                return self.store.put(self._analyse(upload, Path(name)))[0]
            finally:
                Path(name).unlink(missing_ok=True)
        except SQLAlchemyError as exc:
            raise _Transient("store_unavailable", f"decision store: {type(exc).__name__}: {exc}") from exc

    def _analyse(self, upload: UploadEvent, dest: Path) -> NewDecision:
        t0 = time.perf_counter()
        try:
            fetched = fetch_to_file_sync(upload.uri, dest, self.policy)
        except MediaNotFound as exc:
            raise _DeadLetter(exc.code, exc.message) from exc
        except MediaError as exc:  # e.g. over the size limit: user content, a person should look
            return self._media_error(upload, exc, None, {"fetch": _ms(t0), "total": _ms(t0)})
        except FetchFailed as exc:
            if exc.transient:
                raise _Transient(exc.code, exc.message) from exc
            raise _DeadLetter(exc.code, exc.message) from exc
        except DeadlineExceeded as exc:
            raise _Transient(exc.code, exc.message) from exc
        except ModerationError as exc:  # invalid or refused URI: the event is wrong
            raise _DeadLetter(exc.code, exc.message) from exc
        fetch_ms = _ms(t0)

        if self.settings.dedup_exact:
            DEDUP_LOOKUPS.inc()
            original = self.store.find_exact(fetched.sha256, upload.tenant)
            if original is not None:
                DEDUP_HITS.labels(kind="exact").inc()
                same = original.tenant == upload.tenant
                mark = f"duplicate_of:{original.record.video_id}" if same else "duplicate"
                reasons = [mark, *original.record.reasons]
                return self._reuse(upload, original, "duplicate", reasons, fetched.sha256, fetch_ms, t0)

        t1 = time.perf_counter()
        pending = None
        try:
            pending = PendingMedia(fetched.path, self.settings)
            media = pending.result()
            hashes = frame_hashes(media.frames, self.settings.near_duplicate_frames)
            near = self.store.find_near_flagged(
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
                return self._reuse(upload, near, "near_duplicate", [mark], fetched.sha256, fetch_ms, t0)
            result = self.pipeline.score_media(media, fetched.sha256, t1)
        except MediaError as exc:
            spent = {"fetch": fetch_ms, "decode": _ms(t1), "total": _ms(t0)}
            return self._media_error(upload, exc, fetched.sha256, spent)
        except (BackendUnavailable, DeadlineExceeded, OverCapacity) as exc:
            raise _Transient(exc.code, exc.message) from exc
        finally:
            if pending is not None:
                pending.close()
        t = result.timings_ms
        timings = FlagTimings(
            fetch=fetch_ms, decode=t.decode, detect=t.detect, classify=t.classify, total=_ms(t0)
        )
        flag = self._flag(upload, result.decision, result.score, result.reasons, _top_frames(result), timings)
        return NewDecision(
            tenant=upload.tenant,
            origin="scored",
            thresholds=self.thresholds,
            aggregation=self.pipeline.policy.aggregation,
            sha256=fetched.sha256,
            flag=flag,
            frame_hashes=hashes,
        )

    def _reuse(
        self,
        upload: UploadEvent,
        original: StoredDecision,
        origin: Literal["duplicate", "near_duplicate"],
        reasons: list[str],
        sha256: str,
        fetch_ms: float,
        t0: float,
    ) -> NewDecision:
        source = FlagEvent.model_validate_json(original.flag_event_json)
        flag = self._flag(
            upload,
            original.record.decision,
            original.record.score,
            reasons,
            list(source.top_frames),
            FlagTimings(fetch=fetch_ms, total=_ms(t0)),
            model=source.model,
        )
        return NewDecision(
            tenant=upload.tenant,
            origin=origin,
            thresholds=original.record.thresholds,
            aggregation=original.record.aggregation,
            sha256=sha256,
            flag=flag,
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
            decided_at=datetime.now(UTC),
            source_event_id=upload.event_id,
        )


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 2)
