"""Run the decoder in a child process with memory and time limits.

Hostile media can crash or hang FFmpeg. Each decode runs in a fresh child forked from a forkserver that
has already imported PyAV (about 10 ms per request instead of a full interpreter start), with an
address-space limit and no core dumps; the parent waits with a deadline and kills the child when it passes.
The child writes the sampled frames straight into a shared-memory buffer (a memfd the parent owns and maps
once; the child opens it through /proc), so 32 frames of 720p (88 MB) cross the boundary without a copy.
Buffers are pooled and reused: writing into already-allocated shared pages is about 55 ms cheaper per 720p
clip than a fresh shared file, whose pages the kernel must allocate and zero each time.
Any way the child can die becomes one `DecodeFailed` for this request; the caller keeps serving.
"""

from __future__ import annotations

import contextlib
import errno
import io
import mmap
import multiprocessing as mp
import multiprocessing.connection
import os
import resource
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing import context, forkserver, popen_forkserver, reduction, spawn, util
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from service.errors import DecodeFailed, MediaError, error_for_code
from service.media.decode import decode_media
from service.media.types import MediaHeader, MediaLimits, SampledMedia


@dataclass(frozen=True)
class IsolationLimits:
    timeout_seconds: float = 120.0
    memory_mb: int = 3072
    start_method: str = "forkserver"


class _DecoderPopen(popen_forkserver.Popen):
    """Forkserver launch that does not re-import the parent's `__main__` in the child.

    The stdlib child re-runs the parent's main module (the `dfguard` script, a benchmark, a server) before the
    target; the target here is importable by name, so that would only cost every decode the main's imports.
    Same steps as `popen_forkserver.Popen._launch` otherwise.
    """

    def _launch(self, process_obj: Any) -> None:
        prep_data = spawn.get_preparation_data(process_obj._name)
        prep_data.pop("init_main_from_path", None)
        prep_data.pop("init_main_from_name", None)
        buf = io.BytesIO()
        context.set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            context.set_spawning_popen(None)
        self.sentinel, w = forkserver.connect_to_new_process(self._fds)  # type: ignore[attr-defined]
        _parent_w = os.dup(w)
        self.finalizer = util.Finalize(self, util.close_fds, (_parent_w, self.sentinel))  # type: ignore[attr-defined]
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


class _DecoderProcess(mp.context.ForkServerProcess):
    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        return _DecoderPopen(process_obj)


_ctx_lock = threading.Lock()
_contexts: dict[str, Any] = {}


def _context(method: str) -> Any:
    with _ctx_lock:
        ctx = _contexts.get(method)
        if ctx is None:
            ctx = mp.get_context(method)
            if method == "forkserver":
                ctx.set_forkserver_preload(["service.media.decode"])
            _contexts[method] = ctx
        return ctx


def warm_up(limits: IsolationLimits) -> None:
    """Start the forkserver now (it imports PyAV once), so the first request does not pay for it."""
    if limits.start_method == "forkserver":
        from multiprocessing import forkserver

        _context("forkserver")
        forkserver.ensure_running()


class FrameBuffer:
    """A shared-memory region for one decode's frames, owned (and mapped once) by the parent."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.fd = os.memfd_create("dfguard-frames", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, capacity)  # sparse: pages are allocated on first write, then reused
        self._map = mmap.mmap(self.fd, capacity, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.array = np.frombuffer(self._map, dtype=np.uint8)
        self.child_path = f"/proc/{os.getpid()}/fd/{self.fd}"

    def close(self) -> None:
        """Unmap and free the region (only once no array view of it is used any more)."""
        self.array = np.empty(0, dtype=np.uint8)
        # If a view of it still exists somewhere, the kernel frees the region when that view goes.
        with contextlib.suppress(BufferError):
            self._map.close()
        os.close(self.fd)

    def view(self, shape: tuple[int, ...]) -> npt.NDArray[np.uint8]:
        n = int(np.prod(shape))
        if n > self.capacity:
            raise DecodeFailed(f"decoded frames ({n} bytes) exceed the frame buffer ({self.capacity} bytes)")
        v = self.array[:n].reshape(shape)
        v.flags.writeable = False
        return v


class _BufferPool:
    def __init__(self) -> None:
        self._free: list[FrameBuffer] = []
        self._lock = threading.Lock()

    def acquire(self, capacity: int) -> FrameBuffer:
        with self._lock:
            for i, buf in enumerate(self._free):
                if buf.capacity >= capacity:
                    return self._free.pop(i)
        return FrameBuffer(capacity)

    def release(self, buf: FrameBuffer) -> None:
        with self._lock:
            self._free.append(buf)


_buffers = _BufferPool()


def buffer_capacity(limits: MediaLimits) -> int:
    """Bytes the largest allowed sample needs: every frame at working size, square in the worst case."""
    return limits.frames_per_video * limits.max_working_side * limits.max_working_side * 3


def _address_space_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _child_main(
    conn: multiprocessing.connection.Connection,
    path: str,
    limits: MediaLimits,
    buffer_path: str,
    capacity: int,
    memory_mb: int,
    timeout_seconds: float,
) -> None:
    # The child enforces its own deadline too (SIGALRM's default action ends it, even inside FFmpeg), so a
    # decode cannot outlive its limit when nobody waits on it yet.
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.setitimer(signal.ITIMER_REAL, timeout_seconds)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # The budget is address space on top of what the child inherited: a fork of a large server (models,
    # pooled frame buffers) must not start over its limit, and a forkserver child starts small anyway.
    mem = _address_space_bytes() + memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))

    def alloc(shape: tuple[int, ...]) -> npt.NDArray[np.uint8]:
        if int(np.prod(shape)) > capacity:
            raise DecodeFailed("the sampled frames do not fit the frame buffer")
        # MAP_POPULATE maps the already allocated (reused) shared pages in one call, not one fault each.
        n = int(np.prod(shape))
        with open(buffer_path, "r+b") as fh:
            region = mmap.mmap(fh.fileno(), n, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
        return np.frombuffer(region, dtype=np.uint8).reshape(shape)

    try:
        media = decode_media(path, limits, alloc=alloc)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        conn.send(
            (
                "ok",
                media.header,
                media.indices,
                media.times,
                media.scale,
                media.frames.shape,
                peak_mb,
                media.audio,
            )
        )
    except MediaError as exc:
        if isinstance(exc.__cause__, MemoryError):
            conn.send(("error", exc.code, f"the decoder exceeded its memory limit of {memory_mb} MB"))
        else:
            conn.send(("error", exc.code, exc.message))
    except MemoryError:
        conn.send(("error", DecodeFailed.code, f"the decoder exceeded its memory limit of {memory_mb} MB"))
    except OSError as exc:
        if exc.errno == errno.ENOMEM:
            conn.send(
                ("error", DecodeFailed.code, f"the decoder exceeded its memory limit of {memory_mb} MB")
            )
        else:
            conn.send(("error", DecodeFailed.code, f"the decoder failed: {type(exc).__name__}: {exc}"))
    except BaseException as exc:  # noqa: BLE001 - anything else in the child is a failed decode of this media
        conn.send(("error", DecodeFailed.code, f"the decoder failed: {type(exc).__name__}: {exc}"))
    finally:
        conn.close()


class DecodeJob:
    """A decode running in a child process; `result()` waits for it (with the deadline).

    The frames `result()` returns live in a pooled shared buffer: they stay valid until `close()`, which hands
    the buffer back. Starting the job before loading models lets a one-shot CLI decode while the models load.
    """

    def __init__(self, path: str | Path, limits: MediaLimits, isolation: IsolationLimits) -> None:
        ctx = _context(isolation.start_method)
        self.isolation = isolation
        self.started = time.perf_counter()
        self.buffer: FrameBuffer | None = _buffers.acquire(buffer_capacity(limits))
        self.recv, send = ctx.Pipe(duplex=False)
        proc_cls = _DecoderProcess if isolation.start_method == "forkserver" else ctx.Process
        self.proc = proc_cls(
            target=_child_main,
            args=(
                send,
                str(path),
                limits,
                self.buffer.child_path,
                self.buffer.capacity,
                isolation.memory_mb,
                isolation.timeout_seconds,
            ),
            name="dfguard-decoder",
            daemon=True,
        )
        try:
            self.proc.start()
        except BaseException:
            self.recv.close()
            self._release(reuse=True)
            raise
        finally:
            send.close()

    def result(self) -> SampledMedia:
        """The sampled media, or the child's `MediaError`, or `DecodeFailed` if it died or ran out of time."""
        try:
            remaining = self.isolation.timeout_seconds - (time.perf_counter() - self.started)
            msg = _wait(self.recv, self.proc, max(0.0, remaining), self.isolation.timeout_seconds)
        finally:
            self._reap()
        if msg[0] == "error":
            self.close()
            raise error_for_code(msg[1], msg[2])
        _, header, indices, times, scale, shape, peak_mb, audio = msg
        assert isinstance(header, MediaHeader) and self.buffer is not None
        frames = self.buffer.view(tuple(shape))
        extra = {"decoder_peak_rss_mb": float(peak_mb)}
        return SampledMedia(
            header=header, frames=frames, indices=indices, times=times, scale=scale, extra=extra, audio=audio
        )

    def _reap(self) -> None:
        self.recv.close()
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5)

    def close(self) -> None:
        """Stop the child if it still runs and return the frame buffer to the pool (frames become invalid)."""
        self._reap()
        # Reuse the buffer only once the child is gone: nobody can write into it any more.
        self._release(reuse=self.proc.exitcode is not None)

    def _release(self, reuse: bool) -> None:
        if self.buffer is not None:
            if reuse:
                _buffers.release(self.buffer)
            else:
                self.buffer.close()
            self.buffer = None


def _wait(
    recv: multiprocessing.connection.Connection, proc: Any, timeout: float, limit: float
) -> tuple[Any, ...]:
    if not recv.poll(timeout):
        proc.kill()
        raise DecodeFailed(f"the decoder exceeded its time limit of {limit:g} s")
    try:
        msg: tuple[Any, ...] = recv.recv()
    except (EOFError, OSError):
        proc.join(timeout=5)
        if proc.exitcode == -signal.SIGALRM:
            raise DecodeFailed(f"the decoder exceeded its time limit of {limit:g} s") from None
        raise DecodeFailed(f"the decoder crashed (exit code {proc.exitcode})") from None
    return msg
