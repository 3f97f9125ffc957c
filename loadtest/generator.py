"""Open-loop load: a seeded Poisson schedule of uploads, sent on time whatever the server does.

Method. The schedule (arrival times and what each arrival uploads) is computed before the first request from
one seeded RNG, so two runs with the same parameters send the same sequence. Arrivals are a Poisson process
whose rate follows the profile (`constant`, or `spike`: a higher rate for a window); the varying rate is
drawn by thinning (candidates at the peak rate, each kept with probability rate(t) / peak). Each arrival is
launched as its own task at its time and never waits for earlier responses (open loop: a slow server meets
the same offered load, instead of the closed-loop effect of clients slowing down with it); its latency is
measured from the *scheduled* time, so sender lag counts against the server rather than hiding it
(coordinated omission). Bounds: at most `max_in_flight` requests in flight (an arrival over the cap is
recorded as `client_inflight_cap`, never queued), each request has a client timeout, the schedule stops at
`duration` or `max_requests`, and stragglers are abandoned `timeout + 5` s after the last arrival.

Every second a sampler reads `dfguard_queue_depth` and `dfguard_in_flight_requests` from `/metrics` and the
RSS of the server process tree (psutil, when its pid is known). `ServerProcess` starts a real
`dfguard serve` on a free loopback port the way `bench/gateway.py` does, with its log kept in a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx
import psutil

from loadtest.mix import KINDS, MediaFile

__all__ = [
    "Arrival",
    "LoadConfig",
    "Profile",
    "Record",
    "RunResult",
    "Sample",
    "ServerProcess",
    "build_schedule",
    "parse_gauges",
    "run_load",
    "tree_rss_mb",
]

CLIENT_TIMEOUT = "client_timeout"
CONNECTION_ERROR = "connection_error"
INFLIGHT_CAP = "client_inflight_cap"
ABANDONED = "client_abandoned"
CLIENT_CODES = (CLIENT_TIMEOUT, CONNECTION_ERROR, INFLIGHT_CAP, ABANDONED)
"""Outcomes decided on the client side (no HTTP status)."""

GAUGES = ("dfguard_queue_depth", "dfguard_in_flight_requests")


@dataclass(frozen=True)
class Profile:
    kind: str  # "constant" or "spike"
    rate: float  # requests per second
    spike_rate: float = 0.0
    spike_at: float = 0.0  # seconds after the start
    spike_for: float = 0.0

    def rate_at(self, t: float) -> float:
        if self.kind == "spike" and self.spike_at <= t < self.spike_at + self.spike_for:
            return self.spike_rate
        return self.rate

    @property
    def peak(self) -> float:
        return max(self.rate, self.spike_rate) if self.kind == "spike" else self.rate

    def expected_requests(self, duration: float) -> float:
        if self.kind != "spike":
            return self.rate * duration
        overlap = max(0.0, min(duration, self.spike_at + self.spike_for) - max(0.0, self.spike_at))
        return self.rate * (duration - overlap) + self.spike_rate * overlap


@dataclass(frozen=True)
class Arrival:
    index: int
    at: float  # seconds after the start
    kind: str
    media: MediaFile


def build_schedule(
    profile: Profile,
    duration: float,
    max_requests: int,
    weights: Mapping[str, float],
    media: Mapping[str, Sequence[MediaFile]],
    seed: int,
) -> list[Arrival]:
    """Arrival times (thinned Poisson) and uploads, all from one seeded RNG."""
    rng = random.Random(seed)
    kinds = [k for k in KINDS if weights.get(k, 0.0) > 0 and (k == "repost" or media.get(k))]
    if not kinds:
        raise ValueError("no kind of the mix has both a positive weight and media")
    kind_weights = [weights[k] for k in kinds]
    sent_clips: list[MediaFile] = []
    out: list[Arrival] = []
    t = 0.0
    peak = profile.peak
    while peak > 0 and len(out) < max_requests:
        t += rng.expovariate(peak)
        if t >= duration:
            break
        if rng.random() * peak > profile.rate_at(t):
            continue
        kind = rng.choices(kinds, kind_weights)[0]
        if kind == "repost":
            if sent_clips:
                item = rng.choice(sent_clips)
            else:  # nothing to re-share yet: this one is a first upload
                kind = "short_clip"
                item = rng.choice(media["short_clip"])
        else:
            item = rng.choice(media[kind])
        if kind in ("short_clip", "long_clip"):
            sent_clips.append(item)
        out.append(Arrival(len(out), t, kind, item))
    return out


@dataclass
class Record:
    """One arrival's outcome; times in seconds from the start, latency from the scheduled time."""

    index: int
    kind: str
    media: str
    scheduled_s: float
    sent_s: float | None = None
    done_s: float | None = None
    latency_s: float | None = None
    status: int | None = None
    error_code: str | None = None
    retry_after_s: float | None = None


@dataclass
class Sample:
    t: float
    queue_depth: float | None
    in_flight: float | None
    rss_mb: float | None


@dataclass(frozen=True)
class LoadConfig:
    url: str
    profile: Profile
    duration: float
    max_requests: int
    max_in_flight: int = 256
    timeout: float = 60.0
    seed: int = 0
    weights: Mapping[str, float] = field(default_factory=dict)


@dataclass
class RunResult:
    records: list[Record]
    samples: list[Sample]
    elapsed_s: float
    send_window_s: float
    max_in_flight_seen: int
    max_send_lag_s: float


def parse_gauges(text: str, names: Sequence[str] = GAUGES) -> dict[str, float]:
    """Values of unlabelled (or summed labelled) series from Prometheus text exposition."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, rest = line.rpartition("}") if "}" in line else line.partition(" ")
        name = series.split("{", 1)[0].strip()
        if name in names:
            value = rest.split()[0] if rest.split() else "nan"
            out[name] = out.get(name, 0.0) + float(value)
    return out


def tree_rss_mb(pid: int) -> float | None:
    """RSS of a process and its children (the decoder runs in child processes), or None once it is gone."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total / 2**20
    except psutil.NoSuchProcess:
        return None


def _error_code(response: httpx.Response) -> str | None:
    if response.is_success:
        return None
    try:
        body = response.json()
        code = body["error"]["code"]
        return str(code)
    except (ValueError, KeyError, TypeError):
        return f"http_{response.status_code}"


async def _send(client: httpx.AsyncClient, url: str, arrival: Arrival, record: Record, t0: float) -> None:
    loop = asyncio.get_running_loop()
    record.sent_s = loop.time() - t0
    m = arrival.media
    try:
        response = await client.post(url, files={"file": (m.name, m.data, m.content_type)})
    except httpx.TimeoutException:
        record.error_code = CLIENT_TIMEOUT
    except httpx.TransportError as exc:
        record.error_code = f"{CONNECTION_ERROR}:{type(exc).__name__}"
    else:
        record.status = response.status_code
        record.error_code = _error_code(response)
        if "retry-after" in response.headers:
            with contextlib.suppress(ValueError):
                record.retry_after_s = float(response.headers["retry-after"])
    record.done_s = loop.time() - t0
    record.latency_s = record.done_s - record.scheduled_s


async def _sample_forever(
    client: httpx.AsyncClient, base: str, pid: int | None, t0: float, out: list[Sample]
) -> None:
    loop = asyncio.get_running_loop()
    tick = 0
    while True:
        await asyncio.sleep(max(0.0, t0 + tick - loop.time()))
        out.append(await _sample_once(client, base, pid, loop.time() - t0))
        tick += 1


async def _sample_once(client: httpx.AsyncClient, base: str, pid: int | None, t: float) -> Sample:
    gauges: dict[str, float] = {}
    try:
        response = await client.get(f"{base}/metrics")
        if response.status_code == 200:
            gauges = parse_gauges(response.text)
    except httpx.HTTPError:
        pass  # a missed sample is a gap in the plot, not a failure
    rss = tree_rss_mb(pid) if pid is not None else None
    return Sample(t, gauges.get(GAUGES[0]), gauges.get(GAUGES[1]), rss)


async def run_load(config: LoadConfig, schedule: Sequence[Arrival], server_pid: int | None) -> RunResult:
    """Send `schedule` open-loop against `config.url`; return every arrival's record and the samples."""
    base = config.url.rstrip("/")
    score_url = f"{base}/v1/score"
    limits = httpx.Limits(max_connections=config.max_in_flight, max_keepalive_connections=64)
    timeout = httpx.Timeout(config.timeout, connect=min(10.0, config.timeout))
    records = [Record(a.index, a.kind, a.media.name, a.at) for a in schedule]
    samples: list[Sample] = []
    loop = asyncio.get_running_loop()
    async with (
        httpx.AsyncClient(limits=limits, timeout=timeout) as client,
        httpx.AsyncClient(timeout=2.0) as probe,
    ):
        t0 = loop.time()
        sampler = asyncio.create_task(_sample_forever(probe, base, server_pid, t0, samples))
        tasks: set[asyncio.Task[None]] = set()
        max_in_flight = 0
        max_lag = 0.0
        for arrival, record in zip(schedule, records, strict=True):
            delay = t0 + arrival.at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            max_lag = max(max_lag, loop.time() - t0 - arrival.at)
            if len(tasks) >= config.max_in_flight:
                record.error_code = INFLIGHT_CAP
                continue
            task = asyncio.create_task(_send(client, score_url, arrival, record, t0))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            max_in_flight = max(max_in_flight, len(tasks))
        # The window is the configured duration unless max_requests ended the schedule early.
        full = len(schedule) < config.max_requests
        send_window = config.duration if full or not schedule else max(schedule[-1].at, 1e-9)
        if tasks:
            _, pending = await asyncio.wait(set(tasks), timeout=config.timeout + 5.0)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        elapsed = loop.time() - t0
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        samples.append(await _sample_once(probe, base, server_pid, elapsed))
    for record in records:
        if record.sent_s is not None and record.done_s is None:
            record.error_code = ABANDONED
    return RunResult(records, samples, elapsed, send_window, max_in_flight, max_lag)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A real `dfguard serve` on a free 127.0.0.1 port, ready (`/readyz` 200) when the constructor returns."""

    def __init__(self, env: Mapping[str, str], log_path: Path | None = None, ready_timeout: float = 120.0):
        self.env = dict(env)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        exe = str(Path(sys.executable).with_name("dfguard"))
        self._log: IO[bytes] | None = open(log_path, "wb") if log_path is not None else None  # noqa: SIM115
        sink: IO[bytes] | int = self._log if self._log is not None else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [exe, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env={**os.environ, **self.env},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        rc = self.proc.poll()
        self.stop()
        raise RuntimeError(f"dfguard serve did not become ready (exit code {rc}; log: {log_path})")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_mb(self) -> float | None:
        return tree_rss_mb(self.pid)

    def stop(self) -> int | None:
        """Stop the server (SIGTERM, then SIGKILL after 15 s) and return its exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def expected_rate(profile: Profile, duration: float) -> float:
    """Mean offered rate over the run (requests per second)."""
    return profile.expected_requests(duration) / duration if duration > 0 else math.nan
