"""Admission control and execution of scoring requests for the gateway.

Requests are admitted while fewer than `workers + max_queue` are in the gateway (waiting or running); past
that they get 429 with a Retry-After estimated from recent latency, before their upload is even read, so an
overload is refused cheaply instead of collapsing. Admitted requests wait for one of `workers` slots; the
pipeline runs in a thread pool (the decoder is a child process, ONNX Runtime and OpenCV release the GIL),
so the event loop never blocks. A request past its deadline gets 504, but its slot is only released when its
thread really finishes: a timed-out request cannot make the gateway take on more work than it can do.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

from service import metrics
from service.config import Settings
from service.errors import DeadlineExceeded, OverCapacity
from service.pipeline import Pipeline
from service.schemas import ScoreResult

__all__ = ["ScoringService"]


class ScoringService:
    def __init__(self, settings: Settings, pipeline: Pipeline) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.workers = settings.workers
        self.capacity = settings.workers + settings.max_queue
        self.executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="dfguard-score")
        self._slots: asyncio.Semaphore | None = None
        self._admitted = 0
        self._latency_ewma = 1.0  # seconds, for Retry-After

    def _slot_semaphore(self) -> asyncio.Semaphore:
        if self._slots is None:  # bound to the running loop on first use
            self._slots = asyncio.Semaphore(self.workers)
        return self._slots

    @property
    def admitted(self) -> int:
        return self._admitted

    def retry_after_seconds(self) -> int:
        waves = max(1.0, self._admitted / self.workers)
        return max(1, min(60, math.ceil(self._latency_ewma * waves)))

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Hold one place in the gateway for the whole request, or raise `OverCapacity` (429)."""
        if self._admitted >= self.capacity:
            raise OverCapacity(
                f"the service is at capacity ({self.capacity} requests in progress); retry later",
            )
        self._admitted += 1
        try:
            yield
        finally:
            self._admitted -= 1

    async def score(self, path: Path, deadline: float) -> ScoreResult:
        """Score `path` on a worker thread; `deadline` is a `loop.time()` value."""
        loop = asyncio.get_running_loop()
        slots = self._slot_semaphore()
        metrics.QUEUE_DEPTH.inc()
        try:
            await asyncio.wait_for(slots.acquire(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            raise DeadlineExceeded("the request's deadline passed while it waited for a worker") from None
        finally:
            metrics.QUEUE_DEPTH.dec()
        metrics.IN_FLIGHT.inc()
        started = time.perf_counter()

        def _done(_: object) -> None:
            self._latency_ewma = 0.8 * self._latency_ewma + 0.2 * (time.perf_counter() - started)
            metrics.IN_FLIGHT.dec()
            loop.call_soon_threadsafe(slots.release)

        future = loop.run_in_executor(self.executor, self.pipeline.score_file, path)
        future.add_done_callback(_done)
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(0.0, deadline - loop.time()))
        except TimeoutError:
            raise DeadlineExceeded(
                f"scoring did not finish within {self.settings.request_timeout_seconds:g} s"
            ) from None

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
