"""Capacity that holds under abuse and is shared between tenants (real gateway on 127.0.0.1, raw sockets).

Pure parts first (the token bucket, the fair slots, the upload pace), then the attacks: connections that
trickle a multipart body at 1 byte/s, connections that trickle their headers, a tenant that floods the gateway
with long clips, and a burst over a tenant's rate. Every fault test is bounded in time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import socket
import statistics
import threading
import time
from pathlib import Path

import httpx
import pytest

from devtools import media_factory as mf
from devtools.ops_tools import dfguard_serve
from devtools.servers import gateway, metric_value
from service.api.fairness import FairSlots, SlotsFull, TokenBucket
from service.api.uploads import Pace, _Meter
from service.config import Settings, TenantLimits
from service.errors import RateLimited

# --- pure parts ----------------------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_the_burst_then_says_when_the_next_token_comes() -> None:
    clock = _Clock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)  # one token every 0.5 s
    clock.now += 0.25
    assert bucket.take() == pytest.approx(0.25)
    clock.now += 0.25
    assert bucket.take() == 0.0
    clock.now += 100  # refills to the burst, not beyond
    assert [bucket.take() for _ in range(4)] == [0.0, 0.0, 0.0, pytest.approx(0.5)]


def test_rate_limited_retry_after_is_the_bucket_wait_rounded_up() -> None:
    clock = _Clock()
    bucket = TokenBucket(rate=0.25, burst=1, clock=clock)
    bucket.check("a")
    clock.now += 1.5  # 0.375 tokens: 2.5 s to go
    with pytest.raises(RateLimited) as refused:
        bucket.check("a")
    assert refused.value.retry_after_seconds == 3 and refused.value.code == "rate_limited"
    assert TokenBucket(rate=0, burst=1, clock=clock).take() == 0.0  # rate 0: unlimited


def test_fair_slots_serve_the_least_served_tenant_first() -> None:
    async def scenario() -> list[str]:
        slots = FairSlots("scoring", capacity=2, queue=10)
        order: list[str] = []

        async def job(tenant: str, hold: asyncio.Event) -> None:
            await slots.acquire(tenant, timeout=5)
            order.append(tenant)
            await hold.wait()
            slots.release(tenant)

        release = asyncio.Event()
        tasks = [asyncio.create_task(job("a", release)) for _ in range(6)]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(job("b", release)))
        tasks.append(asyncio.create_task(job("b", release)))
        await asyncio.sleep(0.01)
        assert order == ["a", "a"] and slots.waiting == 6
        release.set()
        await asyncio.gather(*tasks)
        return order

    order = asyncio.run(scenario())
    # b arrived behind four more a's, yet each freed slot goes to whoever holds fewer: b, a, b, then a's
    assert order == ["a", "a", "b", "a", "b", "a", "a", "a"], order


def test_fair_slots_refuse_only_a_tenant_over_its_share() -> None:
    async def scenario() -> None:
        slots = FairSlots("scoring", capacity=2, queue=4)
        held: list[asyncio.Task[float]] = []
        for _ in range(6):  # a alone: 2 running, 4 waiting, the room is full
            held.append(asyncio.create_task(slots.acquire("a", timeout=5)))
        await asyncio.sleep(0.01)
        assert slots.would_refuse("a")
        with pytest.raises(SlotsFull):
            await slots.acquire("a", timeout=5)
        assert not slots.would_refuse("b")  # b holds nothing: under its share (3 of 6 places)
        b = [asyncio.create_task(slots.acquire("b", timeout=5)) for _ in range(3)]
        await asyncio.sleep(0.01)
        assert slots.would_refuse("b") and slots.waiting == 7  # overbooked by b's share, no more
        with pytest.raises(TimeoutError):  # a waiter that times out leaves the room
            await slots.acquire("c", timeout=0.01)
        assert slots.waiting == 7
        for t in b + held:
            t.cancel()
        await asyncio.gather(*b, *held, return_exceptions=True)

    asyncio.run(scenario())


def test_weights_split_the_places() -> None:
    slots = FairSlots("upload", capacity=6, queue=0, weight=lambda t: 2.0 if t == "big" else 1.0)
    assert slots.fair_share("big") == 6 and slots.fair_share("small") == 6  # alone: everything


def test_upload_pace_cuts_a_trickle_within_its_window_and_forgives_a_short_stall() -> None:
    pace = Pace(timeout_seconds=100, min_bytes_per_second=1000, window_seconds=3)
    meter = _Meter(pace, now=0.0)
    assert meter.cut_at() == pytest.approx(3.0)  # nothing received: cut after the grace window
    for t in (1.0, 2.0):  # 1 byte/s: the trickle barely moves the cut
        meter.feed(1, t)
    assert meter.cut_at() == pytest.approx(3.0, abs=0.01) and meter.reason(3.0) == "too_slow"
    steady = _Meter(pace, now=0.0)
    for t in range(1, 60):  # exactly the minimum rate: never cut
        steady.feed(1000, float(t))
    assert steady.cut_at() == pytest.approx(62.0)
    fast = _Meter(pace, now=0.0)
    fast.feed(10_000_000, 1.0)  # a fast start buys at most the window, not hours
    assert fast.cut_at() == pytest.approx(4.0)
    assert _Meter(Pace(5.0), now=0.0).cut_at() == pytest.approx(5.0)
    assert _Meter(Pace(float("inf")), now=0.0).cut_at() is None


# --- helpers for the servers -----------------------------------------------------------------------------


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _read_answer(sock: socket.socket) -> tuple[int, bytes]:
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    return (int(head.split()[1]) if head else 0), body


_BOUNDARY = b"TRICKLE"


def _trickle(url: str, out: list[tuple[int, float]], stop: threading.Event) -> None:
    """A multipart upload that declares 100 kB and sends its file 1 byte per second until answered."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", _port(url)), timeout=60) as sock:
        head = (
            b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary="
            + _BOUNDARY
            + b"\r\nContent-Length: 100000\r\n\r\n--"
            + _BOUNDARY
            + b'\r\nContent-Disposition: form-data; name="file"; filename="v.mp4"\r\n\r\n'
        )
        sock.sendall(head)
        sock.settimeout(1.0)
        while not stop.is_set():
            try:
                status, _ = _read_answer(sock)
                out.append((status, time.monotonic() - started))
                return
            except TimeoutError:
                pass
            try:
                sock.sendall(b"\0")
            except OSError:  # cut: the answer is waiting to be read
                sock.settimeout(5)
                status, _ = _read_answer(sock)
                out.append((status, time.monotonic() - started))
                return
    out.append((0, time.monotonic() - started))


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mf.make_image(tmp_path_factory.mktemp("capacity") / "p.jpg")


# --- slow uploads ----------------------------------------------------------------------------------------


def test_trickling_uploads_are_cut_and_cannot_starve_normal_ones(photo: Path, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    settings = Settings(
        workers=1,
        max_queue=3,
        max_uploads=3,
        upload_min_bytes_per_second=2000,
        upload_rate_window_seconds=2,
        upload_timeout_seconds=20,
        upload_dir=spool,
    )
    n_trickling = 8  # more than the upload slots (3) and than the scoring places (4)
    deadline = settings.upload_rate_window_seconds + settings.upload_slot_wait_seconds
    with gateway(settings) as (url, _):
        # the registry is the test process's: compare with what earlier tests left in it
        cut_before = metric_value(url, "dfguard_uploads_cut_total", reason="too_slow")
        refused_before = metric_value(url, "dfguard_errors_total", code="over_capacity")
        results: list[tuple[int, float]] = []
        stop = threading.Event()
        threads = [threading.Thread(target=_trickle, args=(url, results, stop)) for _ in range(n_trickling)]
        for t in threads:
            t.start()
        time.sleep(0.5)  # every slot is taken by a trickle now
        assert metric_value(url, "dfguard_uploads_in_progress") == 3

        def normal(_: int) -> tuple[int, float]:
            t0 = time.monotonic()
            with open(photo, "rb") as fh:
                r = httpx.post(f"{url}/v1/score", files={"file": ("p.jpg", fh)}, timeout=60)
            return r.status_code, time.monotonic() - t0

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            normals = list(pool.map(normal, range(4)))
        for t in threads:
            t.join(timeout=deadline + 10)
        stop.set()
        print(f"\nnormal uploads (status, s): {normals}\ntrickling (status, s): {sorted(results)}")
        assert [s for s, _ in normals] == [200] * 4
        assert len(results) == n_trickling
        assert all(status == 408 for status, _ in results), results
        # each was cut within the slot wait it may have spent queued plus its rate window (and slack)
        assert max(took for _, took in results) < deadline + 5
        assert metric_value(url, "dfguard_uploads_cut_total", reason="too_slow") == cut_before + n_trickling
        assert metric_value(url, "dfguard_upload_bytes_total") > 0
        assert metric_value(url, "dfguard_uploads_in_progress") == 0
        assert metric_value(url, "dfguard_errors_total", code="over_capacity") == refused_before
    assert not list(spool.iterdir())  # no temp file left behind


def test_headers_must_arrive_in_time_and_in_bounds(photo: Path) -> None:
    settings = Settings(http_header_timeout_seconds=1.5, http_max_header_bytes=4096)
    with gateway(settings) as (url, _):
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", _port(url)), timeout=10) as sock:
            sock.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\n")
            for _ in range(5):
                time.sleep(0.5)
                try:
                    sock.sendall(b"X-A: b\r\n")
                except OSError:
                    break
            status, body = _read_answer(sock)
        took = time.monotonic() - started
        assert status == 408 and b'"code": "request_timeout"' in body, body
        assert 1.4 < took < 4, took
        healthz = metric_value(url, "dfguard_http_requests_total", route="/healthz")
        with socket.create_connection(("127.0.0.1", _port(url)), timeout=10) as sock:
            many = b"".join(b"X-H%d: %s\r\n" % (i, b"a" * 100) for i in range(100))  # 10 kB in one read
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
            status, body = _read_answer(sock)
        assert status == 431 and b"headers_too_large" in body, body
        assert metric_value(url, "dfguard_http_requests_total", route="/healthz") == healthz  # never ran
        with socket.create_connection(("127.0.0.1", _port(url)), timeout=10) as sock:
            sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            status, body = _read_answer(sock)
        assert status == 400 and b'"code": "invalid_request"' in body, body  # JSON, not plain text
        assert metric_value(url, "dfguard_http_connections_cut_total", reason="header_timeout") == 1
        assert metric_value(url, "dfguard_http_connections_cut_total", reason="headers_too_large") == 1
        # a request that arrives in time on a kept-alive connection is untouched by the deadline
        with httpx.Client(base_url=url) as client:
            for _ in range(3):
                assert client.get("/healthz").status_code == 200
                time.sleep(0.6)


# --- tenants ---------------------------------------------------------------------------------------------

_KEYS = {"key-a": "a", "key-b": "b"}


def _score(url: str, path: Path, key: str) -> tuple[int, float, httpx.Headers]:
    t0 = time.monotonic()
    with open(path, "rb") as fh:
        r = httpx.post(
            f"{url}/v1/score",
            files={"file": (path.name, fh)},
            headers={"authorization": f"Bearer {key}"},
            timeout=120,
        )
    return r.status_code, time.monotonic() - t0, r.headers


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mf.make_face_clip(
        tmp_path_factory.mktemp("capacity-clips") / "long.mp4", seconds=10.0, width=640, height=360
    )


@pytest.fixture(scope="module")
def b_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mf.make_face_clip(
        tmp_path_factory.mktemp("capacity-clips") / "short.mp4", seconds=2.0, width=640, height=360
    )


def test_a_greedy_tenant_cannot_starve_another(long_clip: Path, b_clip: Path, tmp_path: Path) -> None:
    """A floods with 10-s clips from 30 connections (retrying after Retry-After, as a client should); B's
    2-s clips are all admitted and start at once: A holds at most one of the two workers (the default cap
    with several tenants), so B never waits for A's clips. What is left of B's slowdown is sharing two cores
    with A's running clip and the 30 client threads of this test (docs/performance.md has the figures)."""
    env = {
        "DFG_API_KEYS": json.dumps(_KEYS),
        "DFG_WORKERS": "2",
        "DFG_MAX_QUEUE": "4",
        "DFG_INFERENCE_THREADS": "1",
    }
    with dfguard_serve(tmp_path, **env) as url:
        _score(url, b_clip, "key-b")  # warm-up
        idle = [_score(url, b_clip, "key-b")[1] for _ in range(3)]
        stop = threading.Event()
        a_results: list[tuple[int, float, httpx.Headers]] = []

        def flood() -> None:
            while not stop.is_set():
                a_results.append(_score(url, long_clip, "key-a"))
                if a_results[-1][0] == 429:
                    stop.wait(int(a_results[-1][2]["retry-after"]))

        flooders = [threading.Thread(target=flood) for _ in range(30)]
        for t in flooders:
            t.start()
        time.sleep(3)  # the pool is full of a's clips
        busy = [_score(url, b_clip, "key-b") for _ in range(4)]
        stop.set()
        for t in flooders:
            t.join(timeout=120)
        refused = [r for r in a_results if r[0] == 429]
        print(
            f"\nB idle (s): {[round(x, 2) for x in idle]}  B under A's flood (s): "
            f"{[round(r[1], 2) for r in busy]}  A: {len(a_results)} answers, {len(refused)} refused, "
            f"{sum(r[0] == 200 for r in a_results)} scored"
        )
        b_wait = metric_value(url, "dfguard_tenant_queue_wait_seconds_sum", tenant="b", pool="scoring")
        ratio = statistics.median(r[1] for r in busy) / statistics.median(idle)
        print(f"B median latency {ratio:.2f}x idle; B waited {b_wait:.3f} s for scoring slots in all")
        assert [r[0] for r in busy] == [200] * 4
        assert b_wait < 0.5  # never behind A's clips: a worker was free for B each time
        # The fairness check is `b_wait` above. What is left of B's slowdown is CPU shared on 2 cores:
        # 1.2-1.4x idle alone, up to about 3x when other work shares the cores (docs/performance.md); behind
        # A's queue (two running and four waiting clips) B would take several of A's clips' time.
        assert ratio <= 4.0
        assert refused and all(int(r[2]["retry-after"]) >= 1 for r in refused)
        assert metric_value(url, "dfguard_tenant_throttled_total", tenant="a", reason="over_capacity") > 0
        assert metric_value(url, "dfguard_tenant_throttled_total", tenant="b") == 0
        assert metric_value(url, "dfguard_tenant_queue_wait_seconds_count", tenant="b", pool="scoring") == 8


def test_a_burst_over_the_rate_gets_429_with_a_retry_after_that_holds(photo: Path) -> None:
    limits = {"*": TenantLimits(rate_per_second=0.25, burst=3)}  # one token every 4 s
    settings = Settings(api_keys=_KEYS, tenant_limits=limits, workers=1, max_queue=8)
    with gateway(settings) as (url, _):
        before = metric_value(url, "dfguard_tenant_throttled_total", tenant="a", reason="rate_limited")
        codes = []
        retry: list[int] = []
        for _ in range(5):
            status, _, headers = _score(url, photo, "key-a")
            codes.append(status)
            if status == 429:
                retry.append(int(headers["retry-after"]))
        assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429], codes
        assert all(1 <= r <= 4 for r in retry), retry  # the time to the next token, rounded up
        assert _score(url, photo, "key-b")[0] == 200  # another tenant's bucket is its own
        time.sleep(retry[-1])
        assert _score(url, photo, "key-a")[0] == 200  # after Retry-After it succeeds
        throttled = metric_value(url, "dfguard_tenant_throttled_total", tenant="a", reason="rate_limited")
        assert throttled == before + 2
        body = httpx.post(
            f"{url}/v1/jobs",
            files={"file": ("p.jpg", photo.read_bytes())},
            headers={"authorization": "Bearer key-a"},
        )
        assert body.status_code == 429 and body.json()["error"]["code"] == "rate_limited"  # same bucket


def test_pending_jobs_are_bounded_per_tenant(photo: Path, long_clip: Path) -> None:
    limits = {"*": TenantLimits(max_pending_jobs=1), "b": TenantLimits(max_pending_jobs=2)}
    settings = Settings(api_keys=_KEYS, tenant_limits=limits, workers=1, max_queue=2)
    with gateway(settings) as (url, _):

        def submit(key: str, path: Path) -> httpx.Response:
            return httpx.post(
                f"{url}/v1/jobs",
                files={"file": (path.name, path.read_bytes())},
                headers={"authorization": f"Bearer {key}"},
                timeout=30,
            )

        assert submit("key-a", long_clip).status_code == 202
        second = submit("key-a", photo)
        assert second.status_code == 429 and second.json()["error"]["code"] == "over_capacity"
        assert "tenant a" in second.json()["error"]["message"]
        assert [submit("key-b", photo).status_code for _ in range(2)] == [202, 202]  # b's own limit


def test_a_capped_tenant_leaves_a_slot_for_the_next_one() -> None:
    async def scenario() -> None:
        slots = FairSlots("scoring", capacity=2, queue=4, cap=lambda t: 1 if t == "a" else 2)
        first = await slots.acquire("a", timeout=1)
        waiting_a = asyncio.create_task(slots.acquire("a", timeout=5))
        await asyncio.sleep(0.01)
        assert slots.held == 1 and slots.waiting == 1  # a's second request waits though a slot is free
        assert await slots.acquire("b", timeout=0.1) < 0.01  # b takes the free slot at once
        slots.release("a")
        assert first == 0.0 and await waiting_a >= 0.0 and slots.held_by("a") == 1

    asyncio.run(scenario())


def test_tenant_entries_change_only_what_they_set_and_uploads_are_capped_with_several_tenants() -> None:
    limits = {"*": TenantLimits(rate_per_second=5, burst=7), "acme": TenantLimits(weight=2)}
    s = Settings(tenant_limits=limits, api_keys={"k1": "acme", "k2": "other"}, max_uploads=10, workers=3)
    acme = s.limits_for("acme")
    assert (acme.rate_per_second, acme.burst, acme.weight) == (5, 7, 2)
    assert s.limits_for("other") == limits["*"]
    assert s.upload_cap_for("acme") == 5 and s.running_cap_for("acme") == 2
    alone = Settings(max_uploads=10, workers=3)  # auth off: one tenant uses everything
    assert alone.upload_cap_for("default") == 10 and alone.running_cap_for("default") == 3


def test_queued_jobs_get_the_whole_scoring_deadline_once_they_start(long_clip: Path) -> None:
    """Four 10-s clips behind one worker: the last waits longer than the deadline, and must still succeed."""
    settings = Settings(workers=1, request_timeout_seconds=5, max_pending_jobs=4)
    with gateway(settings) as (url, _):
        ids = []
        for _ in range(4):
            resp = httpx.post(f"{url}/v1/jobs", files={"file": ("c.mp4", long_clip.read_bytes())}, timeout=30)
            assert resp.status_code == 202, resp.text
            ids.append(resp.json()["job_id"])
        deadline = time.monotonic() + 120
        states: list[str] = []
        while time.monotonic() < deadline:
            states = [httpx.get(f"{url}/v1/jobs/{i}").json()["status"] for i in ids]
            if all(s in ("succeeded", "failed") for s in states):
                break
            time.sleep(0.5)
        assert states == ["succeeded"] * 4, states
        waited = metric_value(url, "dfguard_tenant_queue_wait_seconds_sum", tenant="default", pool="scoring")
        assert waited > 0  # they did queue
