"""Cross-request micro-batching over the real ONNX Runtime backend: whole ensemble calls, merged."""

from __future__ import annotations

import threading
from collections.abc import Mapping

import numpy as np
import pytest

from service import metrics
from service.errors import BackendUnavailable
from service.inference import OnnxRuntimeBackend
from service.inference.batcher import MicroBatchingBackend
from service.models import DEFAULT_MODEL, UNTRAINED_MANIFEST


def _calls(model: str) -> float:
    return metrics.INFERENCE_CALLS.labels(backend="onnxruntime", model=model)._value.get()


class _Recording:
    """The real ONNX Runtime backend, noting each call the batcher makes into it (a spy, not a stand-in)."""

    def __init__(self, inner: OnnxRuntimeBackend) -> None:
        self.inner = inner
        self.name = inner.name
        self.models = inner.models
        self.calls: list[tuple[str, dict[str, int]]] = []

    def ready(self) -> bool:
        return self.inner.ready()

    def close(self) -> None:
        self.inner.close()

    def predict(self, model: str, crops: np.ndarray) -> np.ndarray:
        self.calls.append(("predict", {model: len(crops)}))
        return self.inner.predict(model, crops)

    def predict_many(self, crops_by_model: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append(("predict_many", {k: len(v) for k, v in crops_by_model.items()}))
        return self.inner.predict_many(crops_by_model)


def test_concurrent_callers_share_one_backend_call() -> None:
    inner = OnnxRuntimeBackend([UNTRAINED_MANIFEST], threads=1)
    (m,) = inner.models
    batcher = MicroBatchingBackend(inner, max_batch=64, max_wait_ms=300)
    rng = np.random.default_rng(1)
    inputs = [rng.integers(0, 256, (n, m.input_size, m.input_size, 3), dtype=np.uint8) for n in (1, 3, 2, 4)]
    results: list[np.ndarray | None] = [None] * len(inputs)
    start = threading.Barrier(len(inputs))

    def call(i: int) -> None:
        start.wait()
        results[i] = batcher.predict(m.name, inputs[i])

    before = _calls(m.name)
    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert _calls(m.name) - before == 1  # four requests, one backend call
    for x, got in zip(inputs, results, strict=True):
        assert got is not None
        np.testing.assert_allclose(got, inner.predict(m.name, x), atol=1e-6)  # each caller gets its own slice
    batcher.close()


def test_batches_respect_max_batch() -> None:
    inner = OnnxRuntimeBackend([UNTRAINED_MANIFEST], threads=1)
    (m,) = inner.models
    batcher = MicroBatchingBackend(inner, max_batch=4, max_wait_ms=200)
    crops = np.zeros((3, m.input_size, m.input_size, 3), np.uint8)
    before = _calls(m.name)
    threads = [threading.Thread(target=batcher.predict, args=(m.name, crops)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert _calls(m.name) - before == 3  # 3 + 3 > 4: no two calls fit one batch
    batcher.close()


def test_errors_reach_every_caller_and_a_stopped_batcher_is_unavailable() -> None:
    inner = OnnxRuntimeBackend([UNTRAINED_MANIFEST], threads=1)
    batcher = MicroBatchingBackend(inner, max_wait_ms=1)
    with pytest.raises(ValueError, match="expects"):
        batcher.predict("dfguard-untrained-mini", np.zeros((1, 8, 8, 3), np.uint8))
    batcher.close()
    assert not batcher.ready()
    with pytest.raises(BackendUnavailable):
        batcher.predict("dfguard-untrained-mini", np.zeros((1, 224, 224, 3), np.uint8))


def test_concurrent_ensemble_calls_stay_whole_and_share_one_backend_call() -> None:
    """Each caller asks for the whole ensemble; the batch reaches the backend as one `predict_many`."""
    inner = _Recording(OnnxRuntimeBackend([UNTRAINED_MANIFEST, DEFAULT_MODEL], threads=1))
    a, b = inner.models
    # The batch is full at 6 crops (2 + 1 + 3): it runs then, however slowly the threads arrive.
    batcher = MicroBatchingBackend(inner, max_batch=6, max_wait_ms=10_000)  # type: ignore[arg-type]
    rng = np.random.default_rng(2)
    calls = [
        {m.name: rng.integers(0, 256, (n, m.input_size, m.input_size, 3), dtype=np.uint8) for m in (a, b)}
        for n in (2, 1, 3)
    ]
    results: list[dict[str, np.ndarray] | None] = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def call(i: int) -> None:
        start.wait()
        results[i] = batcher.predict_many(calls[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert inner.calls == [("predict_many", {a.name: 6, b.name: 6})]  # one whole-ensemble call, not per model
    for crops, got in zip(calls, results, strict=True):
        assert got is not None and set(got) == {a.name, b.name}
        for name, x in crops.items():
            np.testing.assert_allclose(got[name], inner.inner.predict(name, x), atol=1e-6)
    batcher.close()


def test_calls_for_different_models_are_not_merged() -> None:
    inner = OnnxRuntimeBackend([UNTRAINED_MANIFEST, DEFAULT_MODEL], threads=1)
    a, b = inner.models
    batcher = MicroBatchingBackend(inner, max_batch=64, max_wait_ms=1000)
    one = {a.name: np.zeros((1, a.input_size, a.input_size, 3), np.uint8)}
    both = {m.name: np.zeros((1, m.input_size, m.input_size, 3), np.uint8) for m in (a, b)}
    before = _calls(a.name)
    threads = [threading.Thread(target=batcher.predict_many, args=(x,)) for x in (one, both)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert _calls(a.name) - before == 2  # a one-model call and an ensemble call never share a backend call
    assert batcher.predict_many({a.name: np.empty((0, 224, 224, 3), np.uint8)})[a.name].shape == (0,)
    batcher.close()


def test_closing_while_callers_race_never_leaves_a_caller_waiting() -> None:
    """Callers that race `close()` either get their scores or `BackendUnavailable`: none waits for ever (a
    call queued behind the stop mark used to hang its thread, and the process at exit)."""
    crops = np.zeros((2, 224, 224, 3), np.uint8)
    outcomes: list[str] = []
    for _ in range(5):
        batcher = MicroBatchingBackend(OnnxRuntimeBackend([UNTRAINED_MANIFEST], threads=1), max_wait_ms=2)
        start = threading.Barrier(9)

        def call(b: MicroBatchingBackend = batcher, go: threading.Barrier = start) -> None:
            go.wait()
            try:
                b.predict("dfguard-untrained-mini", crops)
                outcomes.append("scored")
            except BackendUnavailable:
                outcomes.append("unavailable")

        threads = [threading.Thread(target=call) for _ in range(8)]
        for t in threads:
            t.start()
        start.wait()
        batcher.close()
        for t in threads:
            t.join(timeout=30)
            assert not t.is_alive(), "a caller is still waiting after close()"
    assert len(outcomes) == 40 and set(outcomes) <= {"scored", "unavailable"}
