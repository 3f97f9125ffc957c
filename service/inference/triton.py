"""Triton backend: the same `InferenceBackend`, served by NVIDIA Triton over gRPC (asyncio client).

Crops are prepared exactly as the embedded backend prepares them (`prepare.py`) and sent per request in
batches of at most `max_batch_size`; `predict_many` scores the whole ensemble in one call to its ensemble
model: `ensemble` for the served models, `shadow_ensemble` for a shadow candidate (`ensemble_model`), both in
the one repository `service/triton/repo.py` writes.
The asyncio client runs on a private event loop thread, so the pipeline's worker threads can call it like the
embedded backend. Outages are bounded: each call has a timeout, transient failures (unavailable, deadline,
exhausted) are retried with backoff, and after `breaker_failures` consecutive failures a circuit breaker
fails calls at once with `BackendUnavailable` (503 at the gateway) for `breaker_reset_seconds`, then lets one
call probe the server again; a readiness probe (`ready()`) that finds the server ready closes it at once.

The audio model (`audio`, its manifest) is the repository's member named after it, outside the ensembles:
`predict_audio` sends FP32 windows to it over plain gRPC (never shared memory: a few windows per track) in
batches of at most `audio_batch_size(max_batch_size)`, through the same retries, timeouts and circuit
breaker, and turns its logits into LLRs exactly as the embedded backend does (`onnx.llr`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import tritonclient.grpc.aio as grpcclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from service.errors import BackendUnavailable, InternalError
from service.inference.onnx import llr
from service.inference.prepare import input_groups, prepare, to_probability
from service.models.manifest import AudioModelManifest, ModelManifest, find_manifest
from service.triton.repo import ENSEMBLE, audio_batch_size, score_output

__all__ = ["CircuitBreaker", "TritonBackend"]

T = TypeVar("T")

_MAX_MESSAGE_BYTES = 2**31 - 1  # tritonclient's MAX_GRPC_MESSAGE_SIZE
_TRANSIENT = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "CANCELLED", "UNKNOWN")


class CircuitBreaker:
    """Closed -> open after `failures` consecutive failures -> half-open after `reset_seconds` (one probe)."""

    def __init__(self, failures: int, reset_seconds: float) -> None:
        self.failures = failures
        self.reset_seconds = reset_seconds
        self._count = 0
        self._opened_at: float | None = None
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._opened_at is not None and time.monotonic() - self._opened_at < self.reset_seconds

    def before_call(self) -> None:
        with self._lock:
            if self._opened_at is None:
                return
            if time.monotonic() - self._opened_at < self.reset_seconds:
                raise BackendUnavailable("Triton is unavailable (circuit open); retry later")
            self._opened_at = time.monotonic()  # half-open: this call probes, the others wait another period

    def success(self) -> None:
        with self._lock:
            self._count, self._opened_at = 0, None

    def failure(self) -> None:
        with self._lock:
            self._count += 1
            if self._count >= self.failures:
                self._opened_at = time.monotonic()


class _Region:
    """One system shared-memory region, owned by one calling thread."""

    def __init__(self, backend: TritonBackend, size: int) -> None:
        self.backend = backend
        self.size = size
        self.name = f"dfguard-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.handle = shm.create_shared_memory_region(self.name, f"/{self.name}", size)
        self.registered_generation = -1

    async def ensure_registered(self) -> None:
        pool = self.backend._shm
        assert pool is not None
        if self.registered_generation != pool.generation:
            await self.backend._client.register_system_shared_memory(self.name, f"/{self.name}", self.size)
            self.registered_generation = pool.generation

    def write(self, x: np.ndarray, offset: int) -> None:
        shm.set_shared_memory_region(self.handle, [np.ascontiguousarray(x)], offset=offset)


class _SharedMemory:
    """Per-thread input regions (concurrent calls never share one), re-registered after a server restart."""

    def __init__(self, backend: TritonBackend, size: int) -> None:
        self.backend = backend
        self.size = size
        self.generation = 0  # bumped when the server may have forgotten its registrations
        self._local = threading.local()
        self._all: list[_Region] = []
        self._lock = threading.Lock()

    def region(self) -> _Region:
        r: _Region | None = getattr(self._local, "region", None)
        if r is None:
            r = _Region(self.backend, self.size)
            self._local.region = r
            with self._lock:
                self._all.append(r)
        return r

    def forget_registrations(self) -> None:
        self.generation += 1

    async def close(self) -> None:
        for r in self._all:
            with contextlib.suppress(Exception):
                await self.backend._client.unregister_system_shared_memory(r.name)
            with contextlib.suppress(Exception):
                shm.destroy_shared_memory_region(r.handle)
        self._all.clear()


def _transient(exc: InferenceServerException) -> bool:
    status = str(exc.status() or "")
    message = str(exc.message() or "")
    return any(s in status for s in _TRANSIENT) or "not ready" in message or "unavailable" in message.lower()


class TritonBackend:
    name = "triton"

    def __init__(
        self,
        manifest_paths: list[Path],
        url: str,
        *,
        timeout_seconds: float = 10.0,
        retries: int = 2,
        breaker_failures: int = 5,
        breaker_reset_seconds: float = 10.0,
        max_batch_size: int = 64,
        ensemble_model: str = ENSEMBLE,
        shared_memory: bool = False,
        audio: Path | None = None,
    ) -> None:
        if not manifest_paths:
            raise ValueError("at least one model manifest is required")
        # Only the manifests are needed here: the model files live on the Triton server.
        self._manifests = [ModelManifest.model_validate_json(Path(p).read_bytes()) for p in manifest_paths]
        self._audio = AudioModelManifest.model_validate_json(Path(audio).read_bytes()) if audio else None
        self.url = url
        self.timeout = timeout_seconds
        self.retries = retries
        self.max_batch_size = max_batch_size
        self.ensemble_model = ensemble_model  # the Triton ensemble over exactly `manifest_paths`
        self.breaker = CircuitBreaker(breaker_failures, breaker_reset_seconds)
        self._groups = input_groups(self._manifests)
        self._shm = _SharedMemory(self, self._region_bytes()) if shared_memory else None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="dfguard-triton", daemon=True)
        self._thread.start()
        self._client: Any = self._submit(self._make_client(), timeout=10)

    def _region_bytes(self) -> int:
        """Room for one batch of every ensemble input (the largest call a thread can make)."""
        total = 0
        for _, members in self._groups:
            m = members[0]
            itemsize = 1 if m.input_dtype == "uint8" else 4
            total += self.max_batch_size * m.input_size * m.input_size * 3 * itemsize
        return total

    async def _make_client(self) -> Any:
        # gRPC's reconnect backoff grows to 120 s while the server is away, so a Triton that came back could
        # stay unreachable (to the readiness probe and to every call) for two minutes: capped at 2 s. The
        # other options are the client's defaults.
        keepalive = grpcclient.KeepAliveOptions()
        options = [
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
            ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
            ("grpc.initial_reconnect_backoff_ms", 500),
            ("grpc.min_reconnect_backoff_ms", 500),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        return grpcclient.InferenceServerClient(self.url, channel_args=options)

    @property
    def models(self) -> list[ModelManifest]:
        return list(self._manifests)

    @property
    def audio_model(self) -> AudioModelManifest | None:
        return self._audio

    def _submit(self, coro: Awaitable[T], timeout: float) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)  # type: ignore[arg-type]

    def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        delay = 0.05
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            self.breaker.before_call()
            try:
                result = self._submit(make(), timeout=self.timeout + 1)
            except InferenceServerException as exc:
                if self._shm is not None and "shared memory" in str(exc.message()) and attempt < self.retries:
                    self._shm.forget_registrations()  # the server restarted between two calls: register again
                    last = exc
                    continue
                if not _transient(exc):
                    self.breaker.success()  # the server answered: it is up, the request was wrong
                    raise InternalError(f"Triton refused the request: {exc.message()}") from exc
                last = exc
            except (TimeoutError, OSError) as exc:
                last = exc
            else:
                self.breaker.success()
                return result
            self.breaker.failure()
            if self._shm is not None:
                self._shm.forget_registrations()  # a restarted server knows none of our regions
            if attempt < self.retries:
                time.sleep(delay)
                delay *= 4
        raise BackendUnavailable(f"Triton at {self.url} is unavailable: {last}") from last

    def _infer(
        self,
        model: str,
        inputs: dict[str, np.ndarray],
        outputs: list[str],
        *,
        shared_memory: bool = True,
    ) -> dict[str, np.ndarray]:
        """One request; its inputs go through this thread's shared-memory region when the backend uses
        shared memory and `shared_memory` (the regions are sized for crop batches only)."""
        region = self._shm.region() if self._shm is not None and shared_memory else None

        async def run() -> dict[str, np.ndarray]:
            if region is not None:
                await region.ensure_registered()
            req = []
            offset = 0
            for name, x in inputs.items():
                t = grpcclient.InferInput(name, list(x.shape), np_to_triton_dtype(x.dtype))
                if region is None:
                    t.set_data_from_numpy(x)
                else:  # the bytes go through shared memory instead of the gRPC message
                    region.write(x, offset)
                    t.set_shared_memory(region.name, x.nbytes, offset)
                    offset += x.nbytes
                req.append(t)
            outs = [grpcclient.InferRequestedOutput(o) for o in outputs]
            res = await self._client.infer(model, req, outputs=outs, client_timeout=self.timeout)
            return {o: res.as_numpy(o) for o in outputs}

        return self._call(run)

    def predict(self, model: str, crops: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """One member model, called directly (batches of at most `max_batch_size`)."""
        m = find_manifest(self._manifests, model)
        x = prepare(m, crops)
        out = np.empty(len(crops), dtype=np.float32)
        for start in range(0, len(crops), self.max_batch_size):
            chunk = np.ascontiguousarray(x[start : start + self.max_batch_size])
            y = self._infer(m.name, {m.input_name: chunk}, [m.output_name])[m.output_name]
            out[start : start + len(chunk)] = to_probability(m, y, len(chunk))
        return out

    def predict_many(
        self, crops_by_model: Mapping[str, npt.NDArray[np.uint8]]
    ) -> dict[str, npt.NDArray[np.float32]]:
        """The whole ensemble in one call per batch; any other subset model by model."""
        if set(crops_by_model) != {m.name for m in self._manifests}:
            return {name: self.predict(name, crops) for name, crops in crops_by_model.items()}
        n = len(next(iter(crops_by_model.values())))
        prepared = {
            name: prepare(members[0], crops_by_model[members[0].name]) for name, members in self._groups
        }
        outputs = [score_output(m.name) for m in self._manifests]
        scores = {m.name: np.empty(n, dtype=np.float32) for m in self._manifests}
        for start in range(0, n, self.max_batch_size):
            stop = min(n, start + self.max_batch_size)
            inputs = {k: np.ascontiguousarray(v[start:stop]) for k, v in prepared.items()}
            got = self._infer(self.ensemble_model, inputs, outputs)
            for m in self._manifests:
                scores[m.name][start:stop] = to_probability(m, got[score_output(m.name)], stop - start)
        return scores

    def predict_audio(self, windows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """LLRs (N,) of the audio member on (N, window_samples) windows, as the embedded backend's."""
        m = self._audio
        if m is None:
            raise RuntimeError("this backend serves no audio model")
        x = np.ascontiguousarray(windows, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != m.window_samples:
            raise ValueError(f"expected windows of shape (N, {m.window_samples}), got {x.shape}")
        out = np.empty(len(x), dtype=np.float32)
        step = audio_batch_size(self.max_batch_size)
        for start in range(0, len(x), step):
            chunk = x[start : start + step]
            got = self._infer(m.name, {m.input_name: chunk}, [m.output_name], shared_memory=False)
            out[start : start + len(chunk)] = llr(np.asarray(got[m.output_name]).reshape(len(chunk), 2))
        return out

    def ready(self) -> bool:
        """Server live, the ensemble ready and the audio model too if it serves one, asked once without
        retries (readiness probes must be quick).

        Asked even while the circuit is open, and a ready answer closes it: the readiness probe is what ends
        an outage for its callers (the gateway's /readyz, the worker's hold), so the calls it lets through
        must not then fail fast on a breaker still waiting out `breaker_reset_seconds`."""

        wait = min(self.timeout, 2.0)
        models = [self.ensemble_model, *([self._audio.name] if self._audio else [])]

        async def check() -> bool:  # each RPC bounded too: a probe never leaves a call behind on the loop
            if not await self._client.is_server_ready(client_timeout=wait):
                return False
            for model in models:
                if not await self._client.is_model_ready(model, client_timeout=wait):
                    return False
            return True

        try:
            ok = self._submit(check(), timeout=(1 + len(models)) * wait + 1)
        except Exception:  # noqa: BLE001 - any failure means not ready
            return False
        if ok:
            self.breaker.success()
        return ok

    def close(self) -> None:
        try:
            if self._shm is not None:
                self._submit(self._shm.close(), timeout=5)
            self._submit(self._client.close(), timeout=5)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
