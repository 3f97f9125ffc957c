"""Admission control and execution of scoring requests for the gateway.

Scoring takes one of `workers` slots (`FairSlots`, shared fairly between tenants); at most `max_queue`
requests wait for one, beyond which a request gets 429 with a Retry-After estimated from recent latency,
unless its tenant is below its fair share of the places (then it waits: one tenant's flood never locks
another out). A request asks for a slot only once its media is on local disk and sniffed (the upload phase
is I/O, `service/api/intake.py`), so slow uploads cost no scoring capacity. Async jobs queue for the same
slots without a bound (their number is bounded per tenant by `max_pending_jobs`). The pipeline runs in a
thread pool (the decoder is a child process, ONNX Runtime and OpenCV release the GIL), so the event loop never
blocks. A request past its deadline gets 504, but its slot is only released when its thread really finishes:
a timed-out request cannot make the gateway take on more work than it can do.

With a shadow lane, media in the shadow's arm also get the shadow's crops cut while their frames are alive;
they are offered to the lane (which never blocks) once the primary answer is delivered, and scored on the
lane's own thread after it has gone (`service/shadow.py`). A request that timed out (504) offers nothing: its
client got no primary decision to compare with.

Jobs whose decision calls for it (`DFG_EVIDENCE_FOR`) have their evidence captured while the frames are
alive and stored under the job id before the job reads as succeeded; `/v1/score` answers keep none.
"""

from __future__ import annotations

import asyncio
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from service import metrics
from service.api.fairness import FairSlots, SlotsFull
from service.config import Settings
from service.errors import DeadlineExceeded
from service.evidence.capture import EvidenceFor
from service.evidence.document import AuditEntry
from service.evidence.keeper import EvidenceKeeper
from service.pipeline import Pipeline, Scored
from service.schemas import ScoreResult
from service.shadow import ShadowLane

__all__ = ["ScoringService"]


class ScoringService:
    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        shadow: ShadowLane | None = None,
        evidence: EvidenceKeeper | None = None,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.shadow = shadow
        self.evidence = evidence
        self.capture = EvidenceFor.from_settings(settings) if evidence is not None else None
        self.workers = settings.workers
        self.slots = FairSlots(
            "scoring",
            settings.workers,
            settings.max_queue,
            lambda t: settings.limits_for(t).weight,
            settings.running_cap_for,
        )
        self.executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="dfguard-score")
        self._latency_ewma = 1.0  # seconds, for Retry-After

    def retry_after_seconds(self) -> int:
        waves = max(1.0, (self.slots.held + self.slots.waiting) / self.workers)
        return max(1, min(60, math.ceil(self._latency_ewma * waves)))

    def _gauges(self) -> None:
        metrics.QUEUE_DEPTH.set(self.slots.waiting)
        metrics.IN_FLIGHT.set(self.slots.held)

    async def score(
        self,
        path: Path,
        deadline: float | None,
        tenant: str,
        *,
        bounded: bool = True,
        job_id: str | None = None,
    ) -> ScoreResult:
        """Score `path` on a worker thread for `tenant`. `deadline` (a `loop.time()` value) covers the wait
        for a slot too; None (accepted jobs): wait for the tenant's turn however long, then
        `request_timeout_seconds` for the scoring itself. `job_id` names the medium in a shadow row and its
        evidence (jobs only keep evidence).

        Raises `SlotsFull` (429) when `bounded` and the waiting room is full for this tenant."""
        loop = asyncio.get_running_loop()
        timeout = None if deadline is None else max(0.0, deadline - loop.time())
        try:
            waited = await self.slots.acquire(tenant, timeout, bounded=bounded)
        except TimeoutError:
            raise DeadlineExceeded("the request's deadline passed while it waited for a worker") from None
        except SlotsFull:
            metrics.TENANT_THROTTLED.labels(tenant=tenant, reason="over_capacity").inc()
            raise
        finally:
            self._gauges()
        metrics.TENANT_QUEUE_WAIT.labels(tenant=tenant, pool="scoring").observe(waited)
        if deadline is None:
            deadline = loop.time() + self.settings.request_timeout_seconds
        started = time.perf_counter()

        def _done(_: object) -> None:
            self._latency_ewma = 0.8 * self._latency_ewma + 0.2 * (time.perf_counter() - started)

            def _release() -> None:
                self.slots.release(tenant)
                self._gauges()

            loop.call_soon_threadsafe(_release)

        capture = self.capture if job_id is not None else None
        future = loop.run_in_executor(self.executor, self._score_file, path, capture)
        future.add_done_callback(_done)
        try:
            result, cut, captured = await asyncio.wait_for(
                asyncio.shield(future), max(0.0, deadline - loop.time())
            )
        except TimeoutError:
            raise DeadlineExceeded(
                f"scoring did not finish within {self.settings.request_timeout_seconds:g} s"
            ) from None
        if cut is not None and self.shadow is not None:  # answered: now the shadow may look (never blocks)
            self.shadow.offer_scored(
                cut, result, source="gateway", tenant=tenant, sha256=result.media.sha256, video_id=job_id
            )
        if captured is not None and self.evidence is not None and job_id is not None:
            await asyncio.to_thread(
                self.evidence.keep,
                captured,
                result,
                subject="job",
                subject_id=job_id,
                tenant=tenant,
                audit=[
                    AuditEntry(at=self.evidence.clock(), event="decided", detail=f"{result.decision} (job)")
                ],
            )
        return result

    def _score_file(self, path: Path, capture: EvidenceFor | None) -> Scored:
        """The pipeline on `path` (on an executor thread), with the shadow's crops for media in its arm and
        the evidence when `capture` asks for it."""
        lane = self.shadow
        if lane is None and capture is None:
            return Scored(self.pipeline.score_file(path), None)
        return self.pipeline.score_file_with(path, lane.models_for if lane is not None else None, capture)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
