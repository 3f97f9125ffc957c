"""The gateway as a hostile client meets it: raw sockets against a real uvicorn gateway on 127.0.0.1.

Every answer is metered in `dfguard_http_requests_total` and carries `x-request-id`; every fault of a
multipart body is a 400 `invalid_request`; a client that leaves mid-upload is counted, not an error; bounds
hold (parts, requests in flight, the time a job's body may take) and say how to retry.
"""

from __future__ import annotations

import json
import logging
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools import media_factory as mf
from devtools.servers import gateway, metric_value, wait_until
from service.config import Settings


@pytest.fixture(scope="module")
def spool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("uploads")


@pytest.fixture(scope="module")
def gw(spool: Path) -> Iterator[tuple[str, Any]]:
    with gateway(Settings(workers=1, max_queue=2, upload_dir=spool)) as served:
        yield served


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _raw(url: str, data: bytes, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """Send `data` as it is; read one answer (status, lower-case headers, body)."""
    with socket.create_connection(("127.0.0.1", _port(url)), timeout=timeout) as sock:
        sock.sendall(data)
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed before an answer: {got!r}"
            got += chunk
        head, _, body = got.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        while len(body) < int(headers.get("content-length", "0")):
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return int(lines[0].split()[1]), headers, body


def _multipart(body: bytes, path: bytes = b"/v1/score", declared: int | None = None) -> bytes:
    """A multipart request; `declared` > len(body) leaves the server waiting for the rest."""
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\n"
        b"Content-Length: %d\r\n\r\n" % (declared or len(body)) + body
    )


def _chunked(body: bytes) -> bytes:
    return (
        b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    )


def _file_part(data: bytes, name: bytes = b"file") -> bytes:
    return b'--B\r\nContent-Disposition: form-data; name="' + name + b'"; filename="a.mp4"\r\n\r\n' + data


def _assert_error(status: int, headers: dict[str, str], body: bytes, want_status: int, code: str) -> None:
    assert status == want_status, body
    assert headers["content-type"] == "application/json"
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])
    doc = httpx.Response(status, content=body).json()
    assert set(doc) == {"error"} and doc["error"]["code"] == code, doc


def _cases(clip: bytes) -> dict[str, bytes]:
    fields = b"".join(
        b'--B\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nv\r\n' % i for i in range(20)
    )
    return {
        "boundary_not_found": _multipart(b"--X\r\n" + _file_part(clip) + b"\r\n--X--\r\n"),
        "garbage_after_boundary": _multipart(b"--Bxyz\r\n"),
        "header_without_colon": _multipart(b"--B\r\nNoColonHere\r\n\r\nxx\r\n--B--\r\n"),
        "header_too_large": _multipart(b"--B\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\nxx\r\n--B--\r\n"),
        "truncated_body": _multipart(_file_part(clip)),  # the closing boundary never comes
        "truncated_chunked_body": _chunked(_file_part(clip)),
        "too_many_parts": _multipart(fields + _file_part(b"x") + b"\r\n--B--\r\n"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "boundary_not_found",
        "garbage_after_boundary",
        "header_without_colon",
        "header_too_large",
        "truncated_body",
        "truncated_chunked_body",
        "too_many_parts",
    ],
)
def test_every_multipart_fault_is_a_400(gw: tuple[str, Any], spool: Path, face_clip: Path, case: str) -> None:
    url, _ = gw
    before = metric_value(url, "dfguard_http_requests_total", route="/v1/score", code="400")
    status, headers, body = _raw(url, _cases(face_clip.read_bytes()[:20_000])[case])
    _assert_error(status, headers, body, 400, "invalid_request")
    assert metric_value(url, "dfguard_http_requests_total", route="/v1/score", code="400") == before + 1
    assert not list(spool.iterdir()), "the upload's temp file is removed"


def test_a_client_leaving_mid_upload_is_counted_not_an_error(
    gw: tuple[str, Any], spool: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url, _ = gw
    gone = metric_value(url, "dfguard_client_disconnects_total", route="/v1/score")
    internal = metric_value(url, "dfguard_errors_total", code="internal_error")
    caplog.set_level(logging.INFO)
    with socket.create_connection(("127.0.0.1", _port(url))) as sock:
        sock.sendall(_multipart(_file_part(b"\0" * 65_536), declared=2_000_000))
        wait_until(lambda: list(spool.iterdir()), 30, interval=0.05)  # the upload is arriving
    wait_until(
        lambda: metric_value(url, "dfguard_client_disconnects_total", route="/v1/score") == gone + 1,
        30,
        interval=0.05,
    )
    assert metric_value(url, "dfguard_http_requests_total", route="/v1/score", code="499") >= 1
    assert metric_value(url, "dfguard_errors_total", code="internal_error") == internal
    assert not list(spool.iterdir()), "the partial upload is removed"
    assert not [r for r in caplog.records if r.exc_info or "Exception in ASGI" in r.getMessage()]
    assert any(r.getMessage() == "client disconnected" for r in caplog.records)


def test_405_names_the_allowed_methods(gw: tuple[str, Any]) -> None:
    url, _ = gw
    status, headers, body = _raw(url, b"DELETE /v1/score HTTP/1.1\r\nHost: x\r\n\r\n")
    _assert_error(status, headers, body, 405, "method_not_allowed")
    assert headers["allow"] == "POST"
    status, headers, body = _raw(url, b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    _assert_error(status, headers, body, 405, "method_not_allowed")
    assert headers["allow"] == "GET"


def test_request_ids_are_echoed_only_when_tame(gw: tuple[str, Any]) -> None:
    url, _ = gw
    ok = httpx.get(f"{url}/healthz", headers={"x-request-id": "client-7.a:1"})
    assert ok.headers["x-request-id"] == "client-7.a:1"
    for bad in ("r" * 200, "two words", "é"):
        got = httpx.get(f"{url}/healthz", headers={"x-request-id": bad.encode("utf-8")})
        assert re.fullmatch(r"[0-9a-f]{32}", got.headers["x-request-id"]), bad


def test_an_internal_error_is_metered_and_tagged(face_clip: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A 500 built by Starlette's ServerErrorMiddleware still reaches the request metrics (the 5xx alert)."""
    with gateway(Settings(workers=1)) as (url, app):
        app.state.pipeline.backend.inner.close()  # the embedded sessions are gone: scoring now fails inside
        before = metric_value(url, "dfguard_http_requests_total", route="/v1/score", code="500")
        with open(face_clip, "rb") as fh:
            resp = httpx.post(
                f"{url}/v1/score",
                files={"file": ("f.mp4", fh)},
                headers={"x-request-id": "probe-500"},
                timeout=60,
            )
        assert resp.status_code == 500 and resp.json() == {
            "error": {"code": "internal_error", "message": "internal error"}
        }
        assert resp.headers["x-request-id"] == "probe-500"
        assert metric_value(url, "dfguard_http_requests_total", route="/v1/score", code="500") == before + 1
    logged = [r for r in caplog.records if r.getMessage() == "unhandled error"]
    assert len(logged) == 1 and getattr(logged[0], "request_id", None) == "probe-500"  # logged once


def test_requests_in_flight_are_bounded_probes_excepted(spool: Path) -> None:
    with gateway(Settings(max_http_in_flight=1, upload_dir=spool)) as (url, _):
        with socket.create_connection(("127.0.0.1", _port(url))) as hog:
            hog.sendall(_multipart(_file_part(b"\0" * 1000), declared=100_000))
            wait_until(lambda: httpx.get(f"{url}/v1/jobs/x").status_code == 429, 30, interval=0.05)
            resp = httpx.get(f"{url}/v1/jobs/x")
            assert resp.json()["error"]["code"] == "over_capacity" and int(resp.headers["retry-after"]) >= 1
            assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["x-request-id"])
            for probe in ("/healthz", "/readyz", "/metrics"):
                assert httpx.get(f"{url}{probe}").status_code == 200, probe
            assert metric_value(url, "dfguard_http_requests_total", code="429", route="unmatched") >= 1
        wait_until(
            lambda: httpx.get(f"{url}/v1/jobs/x").status_code == 404, 30, interval=0.05
        )  # the hog left: room again


def test_a_stalled_job_body_gets_408_and_frees_its_place(tmp_path: Path, spool: Path) -> None:
    photo = mf.make_image(tmp_path / "p.jpg")
    settings = Settings(
        upload_timeout_seconds=2, upload_min_bytes_per_second=0, max_pending_jobs=1, upload_dir=spool
    )
    with gateway(settings) as (url, _):
        slow = _multipart(_file_part(b"\0" * 1000), path=b"/v1/jobs", declared=100_000)
        status, headers, body = _raw(url, slow)
        _assert_error(status, headers, body, 408, "upload_timeout")
        assert headers["connection"] == "close"
        assert "within 2 s" in json.loads(body)["error"]["message"]
        assert not list(spool.iterdir())  # its temp file is gone
        with open(photo, "rb") as fh:
            resp = httpx.post(f"{url}/v1/jobs", files={"file": ("p.jpg", fh)}, timeout=30)
        assert resp.status_code == 202, resp.text  # the pending-job place was given back
