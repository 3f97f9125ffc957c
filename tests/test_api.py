"""The gateway over real sockets: uvicorn on 127.0.0.1, real media, real HTTP clients."""

from __future__ import annotations

import concurrent.futures
import hashlib
import hmac
import json
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools import media_factory as mf
from devtools.servers import MediaHost, gateway
from service.config import Settings

SECRET = "s3cret"


@pytest.fixture(scope="module")
def host(media_dir: Path, face_clip: Path) -> Iterator[MediaHost]:
    """A media host and callback receiver on 127.0.0.2 (allow-listed), so 127.0.0.1 stays forbidden."""
    h = MediaHost("127.0.0.2", {"/face.mp4": face_clip, "/photo.jpg": mf.make_image(media_dir / "p.jpg")})
    yield h
    h.close()


@pytest.fixture(scope="module")
def api(host: MediaHost) -> Iterator[str]:
    settings = Settings(fetch_allow_hosts=["127.0.0.2/32"], callback_secret=SECRET, workers=2, max_queue=8)
    with gateway(settings) as (url, _):
        yield url


def _upload(url: str, path: Path, **kw: Any) -> httpx.Response:
    with open(path, "rb") as fh:
        return httpx.post(f"{url}/v1/score", files={"file": (path.name, fh)}, timeout=60, **kw)


def _error(resp: httpx.Response) -> str:
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return str(body["error"]["code"])


def test_health_ready_docs(api: str) -> None:
    assert httpx.get(f"{api}/healthz").json() == {"status": "ok", "detail": "", "dependencies": {}}
    ready = httpx.get(f"{api}/readyz")
    assert ready.status_code == 200 and ready.json()["dependencies"] == {"backend": "up", "store": "up"}
    assert httpx.get(f"{api}/docs").status_code == 200
    spec = httpx.get(f"{api}/openapi.json").json()
    assert {"/v1/score", "/v1/jobs", "/v1/jobs/{job_id}", "/healthz", "/readyz", "/metrics"} <= set(
        spec["paths"]
    )
    assert "ScoreResult" in spec["components"]["schemas"]


def _assert_as_the_cli_scores(doc: dict[str, Any], path: Path) -> None:
    """One document, whichever entry point (timings aside)."""
    cli = json.loads(
        subprocess.run(
            [str(Path(sys.executable).with_name("dfguard")), "score", "--json", str(path)],
            capture_output=True,
            check=True,
        ).stdout
    )
    assert {k: v for k, v in doc.items() if k != "timings_ms"} == {
        k: v for k, v in cli.items() if k != "timings_ms"
    }


def test_score_upload_equals_cli(api: str, face_clip: Path) -> None:
    resp = _upload(api, face_clip)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-request-id"]
    _assert_as_the_cli_scores(resp.json(), face_clip)


def test_an_audio_upload_is_scored_like_the_cli_scores_it(api: str, tmp_path: Path) -> None:
    path = mf.make_audio_only(tmp_path / "voice.mp3", seconds=2.0)
    resp = _upload(api, path)
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["media"]["kind"] == "audio" and doc["frames_sampled"] == 0
    assert doc["audio"]["codec"] == "mp3" and doc["audio"]["reasons"] == ["no_speech_found"]
    assert doc["decision"] == "allow" and doc["reasons"] == ["no_speech_found"]
    spec = httpx.get(f"{api}/openapi.json").json()["components"]["schemas"]
    assert {"AudioResult", "AudioWindow"} <= set(spec)
    _assert_as_the_cli_scores(doc, path)


def test_score_by_url(api: str, host: MediaHost, face_clip: Path) -> None:
    resp = httpx.post(f"{api}/v1/score", json={"url": f"{host.base}/face.mp4"}, timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.json()["media"]["sha256"] == hashlib.sha256(face_clip.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [
        (lambda d: mf.make_empty(d / "e.mp4"), 400, "empty_media"),
        (lambda d: mf.make_random_bytes(d / "r.bin"), 415, "unsupported_media"),
        (lambda d: mf.make_text(d / "t.mp4"), 415, "unsupported_media"),
        (
            lambda d: mf.make_audio_only(d / "a.wav", seconds=0.2, sample_rate=384_000),
            422,
            "unsupported_audio",
        ),
        (
            lambda d: mf.make_truncated(
                mf.make_face_clip(d / "c.mp4", seconds=0.5, width=320, height=240), d / "x.mp4"
            ),
            422,
            "corrupt_media",
        ),
    ],
    ids=["empty", "random", "text", "audio_only", "truncated"],
)
def test_media_errors(api: str, tmp_path: Path, make: Any, status: int, code: str) -> None:
    resp = _upload(api, make(tmp_path))
    assert resp.status_code == status
    assert _error(resp) == code


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        (
            {"content": b"not multipart", "headers": {"content-type": "text/plain"}},
            415,
            "unsupported_content_type",
        ),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "invalid_request"),
        ({"json": {"url": "x", "extra": 1}}, 400, "invalid_request"),
        ({"json": {"nourl": 1}}, 400, "invalid_request"),
        ({"files": {"other": ("a.txt", b"abc")}}, 400, "invalid_request"),
        (
            {"content": b"--b\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=b"}},
            400,
            None,
        ),
        ({"json": {"url": "ftp://example.com/a.mp4"}}, 400, "invalid_url"),
    ],
    ids=["text", "bad_json", "extra_field", "no_url", "no_file_part", "broken_multipart", "ftp"],
)
def test_malformed_requests(api: str, kwargs: dict[str, Any], status: int, code: str | None) -> None:
    resp = httpx.post(f"{api}/v1/score", timeout=30, **kwargs)
    assert resp.status_code == status, resp.text
    got = _error(resp)
    assert code is None or got == code


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1/a.mp4",
        "http://localhost/a.mp4",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/a.mp4",
        "http://192.168.1.1/a.mp4",
        "http://[::1]/a.mp4",
        "http://[::ffff:127.0.0.1]/a.mp4",
        "http://2130706433/a.mp4",
    ],
)
def test_ssrf_refused(api: str, target: str) -> None:
    resp = httpx.post(f"{api}/v1/score", json={"url": target}, timeout=30)
    assert resp.status_code == 400
    assert _error(resp) == "url_not_allowed"


def test_redirect_to_loopback_refused(api: str, host: MediaHost, face_clip: Path) -> None:
    host.redirects["/hop"] = "http://127.0.0.1:1/secret"
    resp = httpx.post(f"{api}/v1/score", json={"url": f"{host.base}/hop"}, timeout=30)
    assert resp.status_code == 400
    assert _error(resp) == "url_not_allowed"


def test_unknown_route_is_json_404(api: str) -> None:
    resp = httpx.get(f"{api}/v2/nothing")
    assert resp.status_code == 404 and _error(resp) == "not_found"


def test_concurrent_requests_all_succeed(api: str, face_clip: Path) -> None:
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(lambda _: _upload(api, face_clip).status_code, range(6)))
    assert statuses == [200] * 6


def test_metrics_exposed(api: str, face_clip: Path) -> None:
    _upload(api, face_clip)
    text = httpx.get(f"{api}/metrics").text
    for name in (
        "dfguard_http_requests_total",
        "dfguard_http_request_duration_seconds_bucket",
        "dfguard_stage_duration_seconds_bucket",
        "dfguard_inference_batch_size_bucket",
        "dfguard_queue_depth",
        "dfguard_in_flight_requests",
        "dfguard_decisions_total",
        "dfguard_errors_total",
        'dfguard_model_info{name="dfguard-faceres-sbi",version="2.0.0"} 1.0',
    ):
        assert name in text, name
    assert 'route="/v1/score"' in text


def test_job_with_signed_callback(api: str, host: MediaHost, face_clip: Path) -> None:
    host.fail_callbacks = 1  # the first delivery fails: the callback must be retried
    before = len(host.callbacks)
    with open(face_clip, "rb") as fh:
        resp = httpx.post(
            f"{api}/v1/jobs",
            files={"file": ("f.mp4", fh)},
            data={"callback_url": f"{host.base}/hook"},
            timeout=60,
        )
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert resp.headers["location"] == job["status_url"] == f"/v1/jobs/{job['job_id']}"
    deadline = time.monotonic() + 30
    while (status := httpx.get(f"{api}{job['status_url']}").json())["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert status["status"] == "succeeded" and status["result"]["faces_detected"] == 32
    bodies = host.wait_callbacks(before + 2)
    assert len(bodies) >= before + 2  # one failed attempt, one delivered
    headers, raw = host.callbacks[-1]
    assert headers["x-dfguard-attempt"] == "2"
    expected = hmac.new(SECRET.encode(), headers["x-dfguard-timestamp"].encode() + b"." + raw, hashlib.sha256)
    assert headers["x-dfguard-signature"] == f"sha256={expected.hexdigest()}"
    assert json.loads(raw)["job_id"] == job["job_id"]


def test_job_by_url_and_errors(api: str, host: MediaHost) -> None:
    resp = httpx.post(f"{api}/v1/jobs", json={"url": f"{host.base}/photo.jpg"}, timeout=30)
    assert resp.status_code == 202
    job_id = resp.json()["job_id"]
    deadline = time.monotonic() + 30
    while (status := httpx.get(f"{api}/v1/jobs/{job_id}").json())["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert status["result"]["media"]["kind"] == "image"
    bad = httpx.post(
        f"{api}/v1/jobs", json={"url": f"{host.base}/photo.jpg", "callback_url": "http://10.0.0.1/x"}
    )
    assert bad.status_code == 400 and _error(bad) == "url_not_allowed"
    assert httpx.get(f"{api}/v1/jobs/nonexistent").status_code == 404


def test_oversize_upload_refused_while_streaming(face_clip: Path) -> None:
    with gateway(Settings(max_media_bytes=50_000)) as (url, _):
        assert _error(_upload(url, face_clip)) == "media_too_large"  # declared Content-Length
        # chunked, no Content-Length: the limit must hold while the bytes arrive
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/score HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Type: multipart/form-data; boundary=B\r\n\r\n"
            )
            head = b'--B\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'
            sock.sendall(b"%x\r\n%s\r\n" % (len(head), head))
            chunk = b"\0" * 65536
            sent = 0
            reply = b""
            while sent < 64_000_000 and not reply:  # far past the limit: the server must answer first
                try:
                    sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += len(chunk)
                if select.select([sock], [], [], 0)[0]:
                    reply = sock.recv(65536)
            reply = reply or sock.recv(65536)
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        # answered while the upload was still arriving (the bytes sent include what loopback buffers hold)
        assert sent < 64_000_000, sent


def test_limits_map_to_statuses(tmp_path: Path, face_clip: Path) -> None:
    with gateway(Settings(max_duration_seconds=1.0, max_frame_pixels=10_000_000)) as (url, _):
        assert _error(_upload(url, face_clip)) == "media_too_long"
    with gateway(Settings(max_frame_pixels=10_000)) as (url, _):
        resp = _upload(url, face_clip)
        assert resp.status_code == 422 and _error(resp) == "resolution_too_high"


def test_auth_and_tenants(host: MediaHost, face_clip: Path) -> None:
    keys = {"key-a": "acme", "key-a-ro": "acme:read", "key-b": "globex"}
    with gateway(Settings(api_keys=keys, fetch_allow_hosts=["127.0.0.2/32"])) as (url, _):
        assert _error(httpx.post(f"{url}/v1/score", json={"url": "x"})) == "unauthorized"
        resp = httpx.post(f"{url}/v1/score", json={"url": "x"}, headers={"authorization": "Bearer nope"})
        assert resp.status_code == 401
        resp = _upload(url, face_clip, headers={"authorization": "Bearer key-a-ro"})
        assert resp.status_code == 403 and _error(resp) == "forbidden"
        auth_a = {"authorization": "Bearer key-a"}
        job = httpx.post(f"{url}/v1/jobs", json={"url": f"{host.base}/photo.jpg"}, headers=auth_a).json()
        assert httpx.get(f"{url}/v1/jobs/{job['job_id']}", headers=auth_a).status_code == 200
        assert httpx.get(
            f"{url}/v1/jobs/{job['job_id']}", headers={"authorization": "Bearer key-a-ro"}
        ).is_success
        other = httpx.get(f"{url}/v1/jobs/{job['job_id']}", headers={"authorization": "Bearer key-b"})
        assert other.status_code == 404  # another tenant's job does not exist for you
        assert httpx.get(f"{url}/healthz").status_code == 200  # probes need no key


def test_over_capacity_is_429_not_5xx(face_clip: Path) -> None:
    with gateway(Settings(workers=1, max_queue=1)) as (url, _):
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda _: _upload(url, face_clip), range(8)))
        codes = sorted(r.status_code for r in responses)
        assert 200 in codes and 429 in codes, codes
        assert all(c in (200, 429) for c in codes), codes
        for r in responses:
            if r.status_code == 429:
                assert _error(r) == "over_capacity" and int(r.headers["retry-after"]) >= 1


def test_deadline_is_504(face_clip: Path) -> None:
    with gateway(Settings(request_timeout_seconds=0.05)) as (url, _):
        resp = _upload(url, face_clip)
        assert resp.status_code == 504 and _error(resp) == "deadline_exceeded"
        time.sleep(1)  # the timed-out work finishes in the background; the gateway keeps serving
        assert httpx.get(f"{url}/healthz").status_code == 200


def test_backend_gone_is_503(face_clip: Path) -> None:
    with gateway(Settings()) as (url, app):
        assert _upload(url, face_clip).status_code == 200
        app.state.pipeline.backend.close()  # the inference backend stops serving
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
        assert ready.json()["dependencies"]["backend"] == "down" and int(ready.headers["retry-after"]) >= 1
        resp = _upload(url, face_clip)
        assert resp.status_code == 503 and _error(resp) == "backend_unavailable"
        assert int(resp.headers["retry-after"]) >= 1
        assert httpx.get(f"{url}/healthz").status_code == 200


def test_pending_jobs_are_bounded(face_clip: Path) -> None:
    with gateway(Settings(max_pending_jobs=1, workers=1)) as (url, _):
        codes = []
        for _ in range(3):
            with open(face_clip, "rb") as fh:
                resp = httpx.post(f"{url}/v1/jobs", files={"file": ("f.mp4", fh)}, timeout=30)
            codes.append(resp.status_code)
        assert codes[0] == 202 and 429 in codes[1:], codes


def test_error_messages_do_not_reveal_server_paths(api: str, tmp_path: Path) -> None:
    bad = tmp_path / "x.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + bytes(range(256)) * 20)
    resp = _upload(api, bad)
    assert resp.status_code == 422 and _error(resp) == "corrupt_media"
    assert "/tmp" not in resp.text and "dfguard-upload" not in resp.text
