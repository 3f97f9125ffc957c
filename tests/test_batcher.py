"""Cross-request micro-batching over the real ONNX Runtime backend."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from service import metrics
from service.errors import BackendUnavailable
from service.inference import OnnxRuntimeBackend
from service.inference.batcher import MicroBatchingBackend
from service.models import UNTRAINED_MANIFEST


def _calls(model: str) -> float:
    return metrics.INFERENCE_CALLS.labels(backend="onnxruntime", model=model)._value.get()


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
