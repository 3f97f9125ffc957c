"""Cross-request micro-batching: crops of concurrent requests share one backend call.

Pipelines running in worker threads call `predict`; one batching thread gathers the calls for the same model
that arrive within `max_wait_ms` of the first (up to `max_batch` crops), runs the wrapped backend once, and
hands each caller its slice. N concurrent requests thus cost fewer backend calls than N, which matters most
for Triton and GPUs; a lone request waits at most `max_wait_ms`. A failing call fails only the requests in it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from service import metrics
from service.errors import BackendUnavailable
from service.inference.base import InferenceBackend
from service.models.manifest import ModelManifest

__all__ = ["MicroBatchingBackend"]


@dataclass
class _Call:
    model: str
    crops: npt.NDArray[np.uint8]
    future: Future[npt.NDArray[np.float32]] = field(default_factory=Future)


class MicroBatchingBackend:
    """An `InferenceBackend` that merges concurrent `predict` calls into batched calls of `inner`."""

    def __init__(self, inner: InferenceBackend, *, max_batch: int = 64, max_wait_ms: float = 5.0) -> None:
        self.inner = inner
        self.name = inner.name
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self._queue: queue.Queue[_Call | None] = queue.Queue()
        self._held: _Call | None = None
        self._thread = threading.Thread(target=self._run, name="dfguard-batcher", daemon=True)
        self._thread.start()

    @property
    def models(self) -> list[ModelManifest]:
        return self.inner.models

    def ready(self) -> bool:
        return self._thread.is_alive() and self.inner.ready()

    def predict(self, model: str, crops: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        if len(crops) == 0:
            return np.empty(0, dtype=np.float32)
        if not self._thread.is_alive():
            raise BackendUnavailable("the micro-batcher is stopped")
        call = _Call(model, crops)
        self._queue.put(call)
        return call.future.result()

    def predict_many(
        self, crops_by_model: Mapping[str, npt.NDArray[np.uint8]]
    ) -> dict[str, npt.NDArray[np.float32]]:
        return {name: self.predict(name, crops) for name, crops in crops_by_model.items()}

    def close(self) -> None:
        """Stop batching; calls already queued are still served, later ones get `BackendUnavailable`."""
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _next(self, timeout: float | None) -> _Call | None:
        if self._held is not None:
            call, self._held = self._held, None
            return call
        if timeout is not None and timeout <= 0:
            return self._queue.get_nowait()
        return self._queue.get(timeout=timeout)

    def _run(self) -> None:
        while True:
            first = self._next(None)
            if first is None:
                return
            batch = [first]
            size = len(first.crops)
            deadline = time.monotonic() + self.max_wait
            while size < self.max_batch:
                try:
                    call = self._next(deadline - time.monotonic())
                except queue.Empty:
                    break
                if call is None:
                    self._queue.put(None)  # stop after this batch
                    break
                if call.model != first.model or size + len(call.crops) > self.max_batch:
                    self._held = call  # starts the next batch
                    break
                batch.append(call)
                size += len(call.crops)
            self._execute(batch)

    def _execute(self, batch: list[_Call]) -> None:
        model = batch[0].model
        crops = batch[0].crops if len(batch) == 1 else np.concatenate([c.crops for c in batch])
        started = time.perf_counter()
        try:
            probs = self.inner.predict(model, crops)
        except BaseException as exc:  # noqa: BLE001 - every caller in the batch gets the failure
            for c in batch:
                c.future.set_exception(exc)
            return
        elapsed = time.perf_counter() - started
        metrics.INFERENCE_DURATION.labels(backend=self.name, model=model).observe(elapsed)
        metrics.INFERENCE_CALLS.labels(backend=self.name, model=model).inc()
        metrics.BATCH_SIZE.labels(model=model).observe(len(crops))
        offset = 0
        for c in batch:
            c.future.set_result(probs[offset : offset + len(c.crops)])
            offset += len(c.crops)
