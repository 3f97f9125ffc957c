"""dfguard_client and `dfguard score --server` against a real gateway: uvicorn on 127.0.0.1 over real sockets
(no mock transport), real media, a media host and callback receiver on 127.0.0.2.

Two gateways: `api` (auth on, a stored decision, a slow tenant for rate limits) and `strained` (a tiny
scoring deadline and upload deadline, the decision store down, one request in flight at most), which is
where 408, 429 `over_capacity`, 503 and 504 come from.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from dfguard_client import (
    AsyncClient,
    Client,
    CorruptMedia,
    DeadlineExceeded,
    DecisionRecord,
    DfguardError,
    EmptyMedia,
    FetchFailed,
    Forbidden,
    InvalidRequest,
    MediaError,
    MediaTooLarge,
    NotFound,
    OverCapacity,
    RateLimited,
    RequestError,
    ScoreResult,
    StoreUnavailable,
    TransportError,
    Unauthorized,
    UnsupportedMedia,
    UploadTimeout,
    UrlNotAllowed,
    WaitTimeout,
)

from devtools import client_gen
from devtools import media_factory as mf
from devtools.records import new_decision
from devtools.servers import MediaHost, free_port, gateway
from service.config import Settings, TenantLimits
from service.store import DecisionStore

DFGUARD = str(Path(sys.executable).with_name("dfguard"))
KEYS = {"key-a": "acme", "key-ro": "acme:read", "key-slow": "slow"}
MAX_BYTES = 1_000_000
KINDS = ["sync", "async"]


@pytest.fixture(scope="module")
def photo(media_dir: Path) -> Path:
    return mf.make_image(media_dir / "client-photo.jpg")


@pytest.fixture(scope="module")
def host(face_clip: Path, photo: Path) -> Iterator[MediaHost]:
    h = MediaHost("127.0.0.2", {"/face.mp4": face_clip, "/photo.jpg": photo})
    yield h
    h.close()


@pytest.fixture(scope="module")
def api(host: MediaHost, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    db = f"sqlite:///{tmp_path_factory.mktemp('client-db') / 'decisions.sqlite3'}"
    store = DecisionStore(db)
    store.put(new_decision("vid-1", tenant="acme", decision="flag"))
    store.close()
    settings = Settings(
        api_keys=KEYS,
        fetch_allow_hosts=["127.0.0.2/32"],
        database_url=db,
        max_media_bytes=MAX_BYTES,
        tenant_limits={"slow": TenantLimits(rate_per_second=0.5, burst=1)},
        callback_secret="s3cret",
        workers=2,
    )
    with gateway(settings) as (base, _):
        yield base


@pytest.fixture(scope="module")
def strained(host: MediaHost) -> Iterator[str]:
    settings = Settings(
        fetch_allow_hosts=["127.0.0.2/32"],
        request_timeout_seconds=0.05,  # every scoring: 504
        upload_timeout_seconds=1e-6,  # every upload: 408
        database_url=f"postgresql+psycopg://dfguard@127.0.0.1:{free_port()}/dfguard",  # nobody listens: 503
        unavailable_retry_after_seconds=1,
        max_http_in_flight=1,  # a second request at once: 429 over_capacity
    )
    with gateway(settings) as (base, _):
        yield base


def _call(kind: str, base: str, method: str, *args: Any, key: str | None = "key-a", **kwargs: Any) -> Any:
    """`method` of a `Client` or an `AsyncClient` (each its own connection pool), as the test's kind says."""
    options = {"api_key": key, "max_attempts": kwargs.pop("max_attempts", 5)}
    if kind == "sync":
        with Client(base, **options) as client:
            return getattr(client, method)(*args, **kwargs)

    async def run() -> Any:
        async with AsyncClient(base, **options) as client:
            return await getattr(client, method)(*args, **kwargs)

    return asyncio.run(run())


def _dfguard(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "DFGUARD_API_KEY"}
    return subprocess.run(
        [DFGUARD, *args], capture_output=True, text=True, timeout=60, env={**clean, **(env or {})}
    )


def test_generated_models_and_errors_are_current() -> None:
    assert client_gen.stale() == [], "run `python -m devtools.client_gen`"


def test_the_client_needs_only_httpx_and_pydantic() -> None:
    probe = (
        "import importlib.metadata as md, sys, dfguard_client\n"
        "heavy = ('onnxruntime', 'av', 'cv2', 'kafka', 'boto3', 'numpy', 'sqlalchemy', 'service')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "print(sorted(r.split('>')[0].split('<')[0] for r in md.requires('dfguard-client')))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["[]", "['httpx', 'pydantic']"]


@pytest.mark.parametrize("kind", KINDS)
def test_score_a_file_bytes_and_a_url(
    kind: str, api: str, host: MediaHost, face_clip: Path, photo: Path
) -> None:
    clip = _call(kind, api, "score", face_clip)
    assert isinstance(clip, ScoreResult)
    assert clip.media.sha256 == hashlib.sha256(face_clip.read_bytes()).hexdigest()
    assert (
        clip.media.kind == "video"
        and clip.faces_detected > 0
        and clip.decision in ("allow", "review", "flag")
    )
    raw = _call(kind, api, "score", photo.read_bytes(), filename="p.jpg")
    fetched = _call(kind, api, "score", f"{host.base}/photo.jpg")
    assert raw.media.kind == fetched.media.kind == "image"
    assert raw.media.sha256 == fetched.media.sha256 == hashlib.sha256(photo.read_bytes()).hexdigest()
    assert raw.score == fetched.score


def _truncated(tmp: Path) -> bytes:
    clip = mf.make_face_clip(tmp / "c.mp4", seconds=0.5, width=320, height=240)
    return mf.make_truncated(clip, tmp / "t.mp4").read_bytes()


def _case(
    key: str | None,
    method: str,
    args: Callable[[Path, str], Any],
    cls: type[DfguardError],
    family: type,
    status: int,
) -> Any:  # a pytest.param
    return pytest.param(key, method, args, cls, family, status, id=f"{cls.code}-{method}-{key}")


# Every error a caller can meet on a healthy gateway: (key, method, its argument from (tmp_path, media host
# URL), the class, its family, the HTTP status). The strained gateway's 408, 429, 503 and 504 come below.
ERROR_CASES = [
    _case(None, "get_job", lambda t, h: "j1", Unauthorized, RequestError, 401),
    _case("not-a-key", "get_job", lambda t, h: "j1", Unauthorized, RequestError, 401),
    _case("key-ro", "score", lambda t, h: b"GIF89a", Forbidden, RequestError, 403),
    _case("key-a", "get_job", lambda t, h: "no-such-job", NotFound, RequestError, 404),
    _case("key-a", "get_decision", lambda t, h: "no-such-video", NotFound, RequestError, 404),
    _case("key-a", "submit_job", lambda t, h: f"{h}/{'x' * 5000}", InvalidRequest, RequestError, 400),
    _case("key-a", "score", lambda t, h: "http://10.0.0.1/a.mp4", UrlNotAllowed, RequestError, 400),
    _case("key-a", "score", lambda t, h: f"{h}/missing.mp4", FetchFailed, DfguardError, 422),
    _case("key-a", "score", lambda t, h: b"", EmptyMedia, MediaError, 400),
    _case("key-a", "score", lambda t, h: os.urandom(4096), UnsupportedMedia, MediaError, 415),
    _case("key-a", "score", lambda t, h: _truncated(t), CorruptMedia, MediaError, 422),
    _case("key-a", "score", lambda t, h: b"\0" * (MAX_BYTES + 100_000), MediaTooLarge, MediaError, 413),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("key", "method", "arg", "cls", "family", "status"), ERROR_CASES)
def test_error_answers_are_typed(
    kind: str,
    api: str,
    host: MediaHost,
    tmp_path: Path,
    key: str | None,
    method: str,
    arg: Callable[[Path, str], Any],
    cls: type[DfguardError],
    family: type,
    status: int,
) -> None:
    source = arg(tmp_path, host.base)
    if kind == "async" and cls is MediaTooLarge:
        # The gateway answers 413 on the declared size and closes without reading the body; asyncio drops
        # the unread answer when the write then fails, so AsyncClient may only see the reset (README).
        with pytest.raises((MediaTooLarge, TransportError)):
            _call(kind, api, method, source, key=key)
        return
    with pytest.raises(cls) as caught:
        _call(kind, api, method, source, key=key)
    err = caught.value
    assert isinstance(err, family) and type(err) is cls
    assert err.status == cls.http_status == status and err.code == cls.code
    assert err.request_id and err.message and str(err).startswith(f"{cls.code}: ")


def test_rate_limited_is_raised_or_retried_after_retry_after(api: str, photo: Path) -> None:
    data = photo.read_bytes()
    _call("sync", api, "score", data, key="key-slow")  # the bucket's one token
    with pytest.raises(RateLimited) as caught:
        _call("async", api, "score", data, key="key-slow", max_attempts=1)
    err = caught.value
    assert isinstance(err, OverCapacity) and err.status == 429 and err.retry_after and err.retry_after >= 1
    started = time.monotonic()
    assert _call("sync", api, "score", data, key="key-slow").media.kind == "image"  # waited, then scored
    assert time.monotonic() - started >= 0.9 * err.retry_after - 0.5


def test_job_with_callback_and_wait(api: str, host: MediaHost, face_clip: Path) -> None:
    before = len(host.callbacks)
    with Client(api, api_key="key-a") as client:
        job = client.submit_job(face_clip, callback_url=f"{host.base}/hook")
        assert job.status in ("queued", "running") and job.status_url == f"/v1/jobs/{job.job_id}"
        with pytest.raises(WaitTimeout):
            client.wait(job.job_id, timeout=0.01)  # a 2-s clip is not scored in 10 ms
        done = client.wait(job.job_id, timeout=60)
    assert done.status == "succeeded" and done.result is not None and done.result.faces_detected > 0
    delivered = host.wait_callbacks(before + 1)
    assert next(b for b in delivered[before:] if b["job_id"] == job.job_id)["status"] == "succeeded"


def test_async_job_by_url(api: str, host: MediaHost) -> None:
    async def run() -> Any:
        async with AsyncClient(api, api_key="key-a") as client:
            job = await client.submit_job(f"{host.base}/photo.jpg")
            return await client.wait(job.job_id, timeout=60)

    done = asyncio.run(run())
    assert done.status == "succeeded" and done.result is not None and done.result.media.kind == "image"


@pytest.mark.parametrize("kind", KINDS)
def test_get_decision(kind: str, api: str) -> None:
    record = _call(kind, api, "get_decision", "vid-1", key="key-ro")  # read-only keys may read
    assert isinstance(record, DecisionRecord) and record.decision == "flag" and record.origin == "scored"
    assert isinstance(record.decided_at, datetime) and record.thresholds.review == 0.5


def test_upload_timeout_is_408(strained: str) -> None:
    with pytest.raises(UploadTimeout) as caught:
        # a body of several reads: the cut comes at the first wait for more of it
        _call("sync", strained, "score", b"\xff\xd8\xff" + b"\0" * 2_000_000, key=None)
    assert caught.value.status == 408 and isinstance(caught.value, RequestError)


@pytest.mark.parametrize("kind", KINDS)
def test_deadline_is_504_and_a_failed_job_raises_it(kind: str, strained: str, host: MediaHost) -> None:
    with pytest.raises(DeadlineExceeded) as caught:
        _call(kind, strained, "score", f"{host.base}/face.mp4", key=None)
    assert caught.value.status == 504
    job = _call(kind, strained, "submit_job", f"{host.base}/face.mp4", key=None)
    with pytest.raises(DeadlineExceeded) as failed:
        _call(kind, strained, "wait", job.job_id, key=None, timeout=60)
    assert failed.value.status == 504 and failed.value.request_id is None  # from the job, not an answer


@pytest.mark.parametrize("kind", KINDS)
def test_store_down_is_503_with_retry_after_honoured(kind: str, strained: str) -> None:
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        _call(kind, strained, "get_decision", "vid-1", key=None, max_attempts=2)
    assert time.monotonic() - started >= 1.0, "the second attempt waited Retry-After (1 s)"
    assert caught.value.status == 503 and caught.value.retry_after == 1


def test_over_capacity_is_retried_until_admitted(strained: str, host: MediaHost) -> None:
    job = _call("sync", strained, "submit_job", f"{host.base}/photo.jpg", key=None)
    port = int(strained.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as hog:  # a JSON body that never arrives
        hog.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n")
        hog.sendall(b"content-length: 100\r\n\r\n")
        deadline = time.monotonic() + 10
        while True:  # until the gateway counts the hog in flight (its limit: one request)
            try:
                _call("sync", strained, "get_job", job.job_id, key=None, max_attempts=1)
            except OverCapacity as exc:
                assert exc.code == "over_capacity" and exc.status == 429 and exc.retry_after == 1
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        threading.Timer(0.3, hog.close).start()  # frees the place while the client waits Retry-After
        started = time.monotonic()
        status = _call("sync", strained, "get_job", job.job_id, key=None, max_attempts=3)
        assert status.job_id == job.job_id  # 429, then admitted and answered
        assert time.monotonic() - started >= 0.9


def test_unreachable_gateway_is_a_transport_error() -> None:
    with pytest.raises(TransportError) as caught:
        _call("sync", f"http://127.0.0.1:{free_port()}", "get_job", "j1")
    assert caught.value.status is None and caught.value.code == "transport_error"


def test_cli_server_scores_like_local(api: str, face_clip: Path) -> None:
    local = _dfguard("score", "--json", str(face_clip))
    remote = _dfguard("score", "--server", api, "--json", str(face_clip), env={"DFGUARD_API_KEY": "key-a"})
    assert local.returncode == remote.returncode == 0, (local.stderr, remote.stderr)
    docs = [json.loads(p.stdout) for p in (local, remote)]
    for doc in docs:
        doc.pop("timings_ms")
    assert docs[0] == docs[1]  # the same document, decision and score
    human = _dfguard("score", "--server", api, "--api-key", "key-a", str(face_clip))
    assert human.returncode == 0, human.stderr
    score = docs[0]["score"]
    summary = (
        f"{face_clip}: {docs[0]['decision'].upper()} (score {'n/a' if score is None else f'{score:.3f}'}; "
    )
    assert human.stdout.startswith(summary) and human.stdout.count("\n") == 2


def test_cli_server_errors_like_local(api: str, tmp_path: Path) -> None:
    # DFG_API_KEYS is the server's setting: never taken for the client's key.
    clip = tmp_path / "a.jpg"
    clip.write_bytes(b"\xff\xd8\xff")
    refused = _dfguard("score", "--server", api, "--json", str(clip), env={"DFG_API_KEYS": '{"key-a": "a"}'})
    assert refused.returncode == 2 and json.loads(refused.stdout)["error"]["code"] == "unauthorized"
    missing = str(tmp_path / "missing.mp4")
    local = _dfguard("score", "--json", missing)
    remote = _dfguard("score", "--server", api, "--json", missing, env={"DFGUARD_API_KEY": "key-a"})
    assert local.returncode == remote.returncode == 2
    assert json.loads(local.stdout)["error"]["code"] == json.loads(remote.stdout)["error"]["code"]
    gone = _dfguard("score", "--server", f"http://127.0.0.1:{free_port()}", missing)
    assert gone.returncode == 2  # the file is checked first, as locally
    down = _dfguard(
        "score", "--server", f"http://127.0.0.1:{free_port()}", "--json", "https://x.example/a.mp4"
    )
    assert down.returncode == 1 and json.loads(down.stdout)["error"]["code"] == "transport_error"
