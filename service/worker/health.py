"""Whether the worker holds: the health probes of its shared dependencies, run by one monitor thread.

States: *unknown* (before the first probe round: events wait), *up* (every probe passed: events run; probes
repeat every `DFG_WORKER_PROBE_INTERVAL_SECONDS`, and at once, coalesced, when an event fails) and *held* (a
probe failed: events wait, the runner pauses its partitions and commits nothing new; re-probes back off
exponentially from `DFG_WORKER_HOLD_BACKOFF_SECONDS` to `DFG_WORKER_HOLD_BACKOFF_MAX_SECONDS` and the hold
ends when a round passes, however long that takes). Each round sets
`dfguard_worker_dependency_up{dependency}` and `dfguard_worker_held_since_timestamp_seconds` (0 if not held).

An event's failure counts against its retries only if a probe round started after the failure finds every
dependency up (`recheck`); otherwise the failure belongs to the outage and the event is retried after it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait

from service.config import Settings
from service.metrics import DEPENDENCY_UP, WORKER_HELD_SINCE
from service.worker.dependencies import Probe

__all__ = ["Health"]

log = logging.getLogger(__name__)


class Health:
    """Probes shared dependencies and says whether to hold. Thread-safe; the monitor thread starts on first
    use (or `start()`) and stops with `stop()`."""

    def __init__(
        self,
        probes: Sequence[Probe],
        *,
        interval: float = 5.0,
        timeout: float = 5.0,
        backoff: float = 0.5,
        backoff_max: float = 10.0,
    ) -> None:
        names = [p.name for p in probes]
        if len(set(names)) != len(names):
            raise ValueError(f"probe names must be unique: {names}")
        self.probes = list(probes)
        self.interval = interval
        self.timeout = timeout
        self.backoff = backoff
        self.backoff_max = backoff_max
        self._cond = threading.Condition()
        self._down: dict[str, str] = {}  # dependency -> why its last probe failed
        self._completed = 0  # probe rounds finished
        self._running = False  # a round is in progress
        self._wanted = 0  # the round an event waits for (an on-demand round while up)
        self._held_since: float | None = None  # wall-clock time the current hold began
        self._hold_delay = backoff
        self._logged_at = 0.0  # monotonic time of the last "still holding" line
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max(1, len(self.probes)), thread_name_prefix="dfguard-probe")
        self._pending: dict[str, Future[None]] = {}

    @classmethod
    def from_settings(cls, probes: Sequence[Probe], s: Settings) -> Health:
        return cls(
            probes,
            interval=s.worker_probe_interval_seconds,
            timeout=s.worker_probe_timeout_seconds,
            backoff=s.worker_hold_backoff_seconds,
            backoff_max=s.worker_hold_backoff_max_seconds,
        )

    # --- state ------------------------------------------------------------------------------------------

    @property
    def held(self) -> bool:
        """A probe failed in the last round (False before the first round: unknown is not an outage)."""
        with self._cond:
            return bool(self._down)

    @property
    def up(self) -> bool:
        """At least one round ran and every probe of the last one passed."""
        with self._cond:
            return self._completed > 0 and not self._down

    @property
    def held_since(self) -> float | None:
        with self._cond:
            return self._held_since

    def status(self) -> dict[str, bool]:
        """Dependency -> up, as of the last round (empty before the first)."""
        with self._cond:
            if self._completed == 0:
                return {}
            return {p.name: p.name not in self._down for p in self.probes}

    def down(self) -> dict[str, str]:
        with self._cond:
            return dict(self._down)

    # --- what event threads call ------------------------------------------------------------------------

    def recheck(self) -> bool:
        """Probe now and say whether every dependency is up. Joins a round already running only if it started
        after this call (a round older than the failure proves nothing about it). While held: False at once
        (the hold's backoff paces the probes)."""
        self.start()
        with self._cond:
            if self._down:
                return False
            target = self._completed + (2 if self._running else 1)
            self._wanted = max(self._wanted, target)
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._completed >= target or self._stopped, 2 * self.timeout + 5)
            return not self._down

    def wait_up(self, stop: threading.Event, poll: float = 0.5) -> bool:
        """Block while held (or before the first round); False if `stop` was set (or the monitor stopped)."""
        self.start()
        with self._cond:
            while not stop.is_set() and not self._stopped:
                if self._completed > 0 and not self._down:
                    return True
                self._cond.wait(poll)
        return False

    # --- the monitor --------------------------------------------------------------------------------------

    def start(self) -> None:
        with self._cond:
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._run, name="dfguard-health", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(self.timeout + 5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopped:
                    return
                self._running = True
            down = self._probe_all()
            with self._cond:
                self._apply(down)
                self._completed += 1
                self._running = False
                self._cond.notify_all()
                if self._down:
                    delay, self._hold_delay = self._hold_delay, min(self._hold_delay * 2, self.backoff_max)
                else:
                    delay, self._hold_delay = self.interval, self.backoff
                self._cond.wait_for(
                    lambda: self._stopped or (not self._down and self._wanted > self._completed), delay
                )

    def _probe_all(self) -> dict[str, str]:
        """One round: every probe at once, each bounded by `timeout`; dependency -> reason for those down."""
        down: dict[str, str] = {}
        futures: dict[str, Future[None]] = {}
        for probe in self.probes:
            previous = self._pending.get(probe.name)
            if previous is not None and not previous.done():  # still stuck in an earlier round
                down[probe.name] = f"no answer within {self.timeout:g} s"
                continue
            try:
                futures[probe.name] = self._pending[probe.name] = self._pool.submit(probe.check)
            except RuntimeError:  # the pool is shut down: stopping
                return down
        wait(futures.values(), timeout=self.timeout)
        for name, future in futures.items():
            if not future.done():
                down[name] = f"no answer within {self.timeout:g} s"
            elif (exc := future.exception()) is not None:
                down[name] = f"{type(exc).__name__}: {exc}"[:300]
        return down

    def _apply(self, down: dict[str, str]) -> None:
        """Record a round's result: gauges, the hold's start and end, one log line per change."""
        was = self._down
        self._down = down
        for probe in self.probes:
            DEPENDENCY_UP.labels(dependency=probe.name).set(0 if probe.name in down else 1)
        if down and not was:
            self._held_since = time.time()
            self._logged_at = time.monotonic()
            log.warning("worker: holding: %s", _describe(down))
        elif down and set(down) != set(was):
            log.warning("worker: still holding: %s", _describe(down))
        elif down:
            if time.monotonic() - self._logged_at >= 60:  # a line a minute, not one per re-probe
                self._logged_at = time.monotonic()
                log.info("worker: still holding after %.0f s: %s", self._held_for(), ", ".join(sorted(down)))
        elif was:
            log.info("worker: resuming: every dependency is up again after %.1f s held", self._held_for())
            self._held_since = None
        WORKER_HELD_SINCE.set(self._held_since or 0)

    def _held_for(self) -> float:
        return time.time() - self._held_since if self._held_since is not None else 0.0


def _describe(down: dict[str, str]) -> str:
    return "; ".join(f"{name} down ({why})" for name, why in sorted(down.items()))
