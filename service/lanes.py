"""A low-priority lane: one daemon thread at the lowest CPU priority working through a bounded queue.

Work that follows a decision and must never delay one (the shadow's verdicts, evidence overlays) runs here: a
`put` never blocks (a full queue refuses, and the owner counts what it skipped), and the thread only takes CPU
time live scoring leaves idle. Owners add the domain: what one item's work is, what they count, what they
release once the thread has finished.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, Literal, TypeVar

from prometheus_client import Gauge

__all__ = ["LowPriorityLane", "Put", "lower_thread_priority"]

log = logging.getLogger("dfguard.lanes")

W = TypeVar("W")
Put = Literal["queued", "queue_full", "closed"]


def lower_thread_priority() -> None:
    """Give the calling thread the lowest CPU priority (nice 19), where the OS allows it.

    On Linux a thread has its own nice value (`setpriority` on its thread id), and with one intra-op thread
    ONNX Runtime computes on the calling thread: a lane then only uses CPU time the primary leaves idle,
    instead of taking an equal share of a saturated machine.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):  # not Linux, or not allowed: the lane still works, at normal priority
        log.info("low-priority lane runs at normal CPU priority (setpriority unavailable)")


class LowPriorityLane(Generic[W]):
    """Runs `handle(item)` for each item put, in order, on its own thread; `handle` must not raise.

    Args:
        depth: the gauge of items waiting.
        dropped: called for each item still queued when `close` runs out of time (the owner counts it).
    """

    def __init__(
        self,
        name: str,
        handle: Callable[[W], None],
        *,
        maxsize: int,
        depth: Gauge,
        dropped: Callable[[W], None],
    ) -> None:
        self._handle = handle
        self._depth = depth
        self._dropped = dropped
        self._queue: queue.Queue[W | None] = queue.Queue(maxsize=maxsize)
        self._closed = threading.Event()
        # Orders puts against `close`: a put that saw the lane open is queued before the stop mark.
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def native_id(self) -> int | None:
        """The lane thread's OS id (its nice value is its own)."""
        return self._thread.native_id

    def put(self, item: W) -> Put:
        """Queue `item` if the lane is open and has room; never blocks."""
        with self._lock:
            if self._closed.is_set():
                return "closed"
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                return "queue_full"
        self._depth.set(self._queue.qsize())
        return "queued"

    def _run(self) -> None:
        lower_thread_priority()
        while True:
            item = self._queue.get()
            self._depth.set(self._queue.qsize())
            if item is None:
                return
            self._handle(item)

    def close(self, timeout: float) -> bool:
        """Stop taking work and finish what is queued within `timeout` seconds (what the thread has not taken
        by then is dropped, each item through `dropped`). True when the thread has finished: its owner may
        release what it used; False on a later call, or when the thread is still busy."""
        with self._lock:
            if self._closed.is_set():
                return False
            self._closed.set()
        deadline = time.monotonic() + timeout
        while True:  # room for the stop mark, dropping queued work only once time runs out
            try:
                self._queue.put(None, timeout=max(0.01, deadline - time.monotonic()))
                break
            except queue.Full:
                if time.monotonic() >= deadline:
                    self._drop_queued()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        self._depth.set(0)
        if self._thread.is_alive():  # busy past the timeout: what it has not taken yet is dropped
            self._drop_queued()
            log.warning("%s still working at shutdown: left behind", self._thread.name)
            return False
        return True

    def _drop_queued(self) -> None:
        """Drop every queued item; the stop mark, if it was queued, goes back in (the thread ends on it)."""
        stop_mark = False
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                stop_mark = True
            else:
                self._dropped(item)
        if stop_mark:
            self._queue.put_nowait(None)  # room: the queue was just emptied, and puts are refused now
