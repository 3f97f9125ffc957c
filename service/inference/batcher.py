"""Cross-request micro-batching: the ensemble calls of concurrent videos share one backend call.

Pipelines running in worker threads call `predict_many` (crops for every model of the ensemble); one batching
thread gathers the calls for the same set of models that arrive within `max_wait_ms` of the first (up to
`max_batch` crops per model), concatenates each model's crops, runs the wrapped backend's `predict_many`
**once** and hands each caller its slices. A whole call stays whole, so on Triton a batch is one request to
the `ensemble` model rather than one per member, and N concurrent videos cost fewer backend calls than N,
which matters most for Triton and GPUs; a lone call waits at most `max_wait_ms`. A failing call fails only
the callers in it. `predict(model, crops)` is a one-model `predict_many`.
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
from service.models.manifest import AudioModelManifest, ModelManifest

__all__ = ["MicroBatchingBackend"]

Scores = dict[str, npt.NDArray[np.float32]]


@dataclass
class _Call:
    crops: dict[str, npt.NDArray[np.uint8]]
    key: tuple[str, ...] = ()  # the models asked for: only calls for the same models share a batch
    size: int = 0  # crops of the largest model in the call
    future: Future[Scores] = field(default_factory=Future)

    def __post_init__(self) -> None:
        self.key = tuple(sorted(self.crops))
        self.size = max(len(c) for c in self.crops.values())


class MicroBatchingBackend:
    """An `InferenceBackend` that merges concurrent `predict_many` calls into batched calls of `inner`."""

    def __init__(self, inner: InferenceBackend, *, max_batch: int = 64, max_wait_ms: float = 5.0) -> None:
        self.inner = inner
        self.name = inner.name
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self._queue: queue.Queue[_Call | None] = queue.Queue()
        self._held: _Call | None = None
        self._closed = False
        self._lock = threading.Lock()  # orders "closed" against enqueueing: no call lands after the stop mark
        self._thread = threading.Thread(target=self._run, name="dfguard-batcher", daemon=True)
        self._thread.start()

    @property
    def models(self) -> list[ModelManifest]:
        return self.inner.models

    @property
    def audio_model(self) -> AudioModelManifest | None:
        return self.inner.audio_model

    def predict_audio(self, windows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Straight to the wrapped backend: a track's few windows are one call already."""
        if self._closed:
            raise BackendUnavailable("the micro-batcher is stopped")
        return self.inner.predict_audio(windows)

    def ready(self) -> bool:
        return self._thread.is_alive() and self.inner.ready()

    def predict(self, model: str, crops: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        return self.predict_many({model: crops})[model]

    def predict_many(self, crops_by_model: Mapping[str, npt.NDArray[np.uint8]]) -> Scores:
        if not crops_by_model or all(len(c) == 0 for c in crops_by_model.values()):
            return {name: np.empty(0, dtype=np.float32) for name in crops_by_model}
        call = _Call(dict(crops_by_model))
        with self._lock:
            if self._closed or not self._thread.is_alive():
                raise BackendUnavailable("the micro-batcher is stopped")
            self._queue.put(call)
        return call.future.result()

    def close(self) -> None:
        """Stop batching (calls already queued are still served, later ones get `BackendUnavailable`), then
        close the wrapped backend. A call still queued when the batching thread is gone (it outlived the
        join) fails rather than waiting for ever."""
        with self._lock:
            self._closed = True
            self._queue.put(None)
        self._thread.join(timeout=5)
        self.inner.close()
        if not self._thread.is_alive():
            self._fail_queued()

    def _fail_queued(self) -> None:
        stopped = BackendUnavailable("the micro-batcher is stopped")
        left: list[_Call | None] = [self._held] if self._held is not None else []
        self._held = None
        while True:
            try:
                left.append(self._queue.get_nowait())
            except queue.Empty:
                break
        for call in left:
            if call is not None and not call.future.done():
                call.future.set_exception(stopped)

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
            size = first.size
            deadline = time.monotonic() + self.max_wait
            while size < self.max_batch:
                try:
                    call = self._next(deadline - time.monotonic())
                except queue.Empty:
                    break
                if call is None:
                    self._queue.put(None)  # stop after this batch
                    break
                if call.key != first.key or size + call.size > self.max_batch:
                    self._held = call  # starts the next batch
                    break
                batch.append(call)
                size += call.size
            self._execute(batch)

    def _execute(self, batch: list[_Call]) -> None:
        started = time.perf_counter()
        try:  # everything that can fail, inside: the batching thread must outlive any one bad call
            if len(batch) == 1:
                merged = batch[0].crops
            else:
                merged = {m: np.concatenate([c.crops[m] for c in batch]) for m in batch[0].key}
            scores = self.inner.predict_many(merged)
        except BaseException as exc:  # noqa: BLE001 - every caller in the batch gets the failure
            for c in batch:
                c.future.set_exception(exc)
            return
        elapsed = time.perf_counter() - started
        for model, crops in merged.items():
            metrics.INFERENCE_DURATION.labels(backend=self.name, model=model).observe(elapsed)
            metrics.INFERENCE_CALLS.labels(backend=self.name, model=model).inc()
            metrics.BATCH_SIZE.labels(model=model).observe(len(crops))
        offsets = dict.fromkeys(merged, 0)
        for c in batch:
            mine = {}
            for model, crops in c.crops.items():
                start = offsets[model]
                mine[model] = scores[model][start : start + len(crops)]
                offsets[model] = start + len(crops)
            c.future.set_result(mine)
