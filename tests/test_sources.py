"""Fetching by URI against real sockets: a threaded HTTP(S) server on 127.0.0.1, nothing else.

Every test runs under a guard that records each outgoing `connect()` and refuses any destination other than
127.0.0.1, so "refused before connecting" is asserted, not assumed. Names other than `localhost` only ever go
to a fake resolver (`fake_dns`), never to real DNS.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from service.config import Settings
from service.errors import (
    DeadlineExceeded,
    EmptyMedia,
    Fault,
    FetchFailed,
    InvalidUrl,
    MediaNotFound,
    MediaTooLarge,
    ModerationError,
    SourceUnavailable,
    UrlNotAllowed,
    classify,
)
from service.sources import (
    Fetched,
    FetchPolicy,
    check_callback_url,
    check_url,
    fetch_to_file,
    fetch_to_file_sync,
)

PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
LIMIT = 256 * 1024
_STOP = threading.Event()  # set at teardown so that dripping/stalling handlers end promptly


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection; bodies without a length end at close

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _head(self, status: int, headers: Mapping[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _body(self, data: bytes, content_type: str = "application/octet-stream") -> None:
        self._head(200, {"Content-Type": content_type, "Content-Length": str(len(data))})
        self.wfile.write(data)

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self._route(path, query)  # the client may hang up on purpose (limits, deadlines)

    def _route(self, path: str, query: str) -> None:
        if path == "/file":
            self._body(PAYLOAD, "video/mp4")
        elif path == "/host":
            self._body(self.headers["Host"].encode(), "text/plain")
        elif path.startswith("/chain/"):
            left = int(path.rsplit("/", 1)[1])
            self._head(302, {"Location": f"/chain/{left - 1}" if left > 0 else "../file"})
        elif path == "/to":
            self._head(307, {"Location": unquote(query)})
        elif path == "/no-location":
            self._head(302, {})
        elif path == "/huge":  # no Content-Length: only counting while streaming can stop it
            self._head(200, {"Content-Type": "video/mp4"})
            for _ in range(256):
                self.wfile.write(b"\0" * 65536)
        elif path == "/declared-huge":
            self._head(200, {"Content-Length": str(10**9)})
            self.wfile.write(b"\0" * 1024)
        elif path == "/truncated":
            self._head(200, {"Content-Length": "1000"})
            self.wfile.write(b"x" * 10)
        elif path == "/longer":  # says 10 bytes, sends 1000: the rest must never be read
            self._head(200, {"Content-Length": "10"})
            self.wfile.write(b"y" * 1000)
        elif path == "/drip":
            self._head(200, {})
            while not _STOP.wait(0.05):
                self.wfile.write(b"z")
                self.wfile.flush()
        elif path == "/stall":
            self._head(200, {"Content-Length": "100"})
            self.wfile.write(b"s")
            self.wfile.flush()
            _STOP.wait(10)
        elif path == "/empty":
            self._body(b"")
        elif path.startswith("/status/"):
            self._head(int(path.rsplit("/", 1)[1]), {"Content-Length": "0"})
        else:
            self._head(404, {"Content-Length": "0"})


def _serve(server: ThreadingHTTPServer) -> Iterator[int]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        _STOP.set()
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    yield from _serve(ThreadingHTTPServer(("127.0.0.1", 0), _Handler))


@pytest.fixture(scope="module")
def base(port: int) -> str:
    return f"http://127.0.0.1:{port}"


@pytest.fixture(autouse=True)
def connects(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every host a client socket connected to (or tried to) in the test; only 127.0.0.1 is let through."""
    seen: list[str] = []
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            seen.append(str(address[0]))
            if address[0] != "127.0.0.1":
                raise ConnectionRefusedError(f"test guard: no connections to {address[0]}")
        real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    return seen


FakeDns = Callable[[Mapping[str, Sequence[str]]], list[str]]


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> FakeDns:
    """Install a resolver knowing only the given names (and IP literals); returns the names asked for."""

    def install(table: Mapping[str, Sequence[str]]) -> list[str]:
        asked: list[str] = []
        monkeypatch.setattr(socket, "getaddrinfo", _fake_getaddrinfo(table, asked))
        return asked

    return install


def _fake_getaddrinfo(
    table: Mapping[str, Sequence[str]], asked: list[str], default: Sequence[str] = ()
) -> Callable[..., list[tuple[Any, ...]]]:
    def getaddrinfo(host: str | bytes, port: Any, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        name = host.decode() if isinstance(host, bytes) else host
        try:
            literal = ipaddress.ip_address(name)
        except ValueError:
            asked.append(name)
            if name not in table and not default:
                raise socket.gaierror(socket.EAI_NONAME, "not in the test's fake DNS") from None
            addresses = [ipaddress.ip_address(a) for a in table.get(name, default)]
        else:
            addresses = [literal]
        number = int(port or 0)
        return [
            (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (str(a), number))
            if a.version == 4
            else (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (str(a), number, 0, 0))
            for a in addresses
        ]

    return getaddrinfo


def policy(**overrides: Any) -> FetchPolicy:
    options: dict[str, Any] = {
        "max_bytes": LIMIT,
        "timeout_seconds": 5.0,
        "connect_timeout_seconds": 1.0,
        "max_redirects": 3,
        "allow_hosts": ["127.0.0.1"],
    }
    options.update(overrides)
    return FetchPolicy(**options)


def fetch(url: str, dest: Path, pol: FetchPolicy) -> Fetched:
    return asyncio.run(fetch_to_file(url, dest, pol))


# --- http(s) fetching -------------------------------------------------------------------------------------


def test_fetch_streams_to_file_with_digest(base: str, tmp_path: Path, connects: list[str]) -> None:
    dest = tmp_path / "media"
    got = fetch(f"{base}/file", dest, policy())
    assert got == Fetched(dest, len(PAYLOAD), "video/mp4", f"{base}/file", PAYLOAD_SHA256)
    assert dest.read_bytes() == PAYLOAD
    assert connects == ["127.0.0.1"]


def test_sync_twin_fetches_the_same(base: str, tmp_path: Path) -> None:
    got = fetch_to_file_sync(f"{base}/file", tmp_path / "m", policy())
    assert (got.size, got.sha256, got.content_type) == (len(PAYLOAD), PAYLOAD_SHA256, "video/mp4")


def test_sync_twin_refuses_private_address_before_connecting(
    base: str, tmp_path: Path, connects: list[str]
) -> None:
    with pytest.raises(UrlNotAllowed):
        fetch_to_file_sync(f"{base}/file", tmp_path / "m", policy(allow_hosts=[]))
    assert connects == []
    assert not (tmp_path / "m").exists()


def test_connection_is_pinned_to_the_checked_address(
    port: int, tmp_path: Path, fake_dns: FakeDns, connects: list[str]
) -> None:
    """The name is resolved once per hop; the request goes to that address with the original Host."""
    asked = fake_dns({"media.example": ["127.0.0.1"]})
    got = fetch(f"http://media.example:{port}/host", tmp_path / "h", policy())
    assert got.path.read_bytes() == f"media.example:{port}".encode()
    assert got.final_url == f"http://media.example:{port}/host"
    assert asked == ["media.example"]
    assert connects == ["127.0.0.1"]


def test_dns_rebinding_after_the_check_is_not_followed(
    port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, connects: list[str]
) -> None:
    """The resolver answers 127.0.0.1 once, then 10.0.0.1: a client that re-resolved would hit the guard."""
    answers = iter([["127.0.0.1"]])

    def rebinding(host: str | bytes, port_: Any, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        name = host.decode() if isinstance(host, bytes) else host
        addresses = next(answers, ["10.0.0.1"]) if name == "rebind.example" else [name]
        return _fake_getaddrinfo({name: addresses}, [])(name, port_)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    for run in (fetch, fetch_to_file_sync):
        answers = iter([["127.0.0.1"]])
        got = run(f"http://rebind.example:{port}/host", tmp_path / "r", policy())
        assert got.size == len(f"rebind.example:{port}")
    assert connects == ["127.0.0.1", "127.0.0.1"]


def test_redirect_chain_is_followed_with_relative_locations(base: str, tmp_path: Path) -> None:
    # /chain/3 -> /chain/2 -> /chain/1 -> /chain/0 -> ../file: four redirects
    got = fetch(f"{base}/chain/3", tmp_path / "m", policy(max_redirects=4))
    assert (got.final_url, got.sha256) == (f"{base}/file", PAYLOAD_SHA256)


@pytest.mark.parametrize("run", [fetch, fetch_to_file_sync])
def test_too_many_redirects(run: Callable[..., Fetched], base: str, tmp_path: Path) -> None:
    with pytest.raises(FetchFailed, match="more than 3"):
        run(f"{base}/chain/3", tmp_path / "m", policy(max_redirects=3))
    assert not (tmp_path / "m").exists()


def test_redirect_without_location(base: str, tmp_path: Path) -> None:
    with pytest.raises(FetchFailed, match="without a Location"):
        fetch(f"{base}/no-location", tmp_path / "m", policy())


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.2:{port}/file",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://[::1]:{port}/file",
        "http://[::ffff:10.0.0.1]/",
        "http://0x7f.2:{port}/file",
    ],
)
def test_redirect_to_disallowed_address_is_refused_before_connecting(
    target: str, base: str, port: int, tmp_path: Path, connects: list[str]
) -> None:
    location = target.format(port=port)
    with pytest.raises(UrlNotAllowed):
        fetch(f"{base}/to?{location}", tmp_path / "m", policy(allow_hosts=["127.0.0.1/32"]))
    assert connects == ["127.0.0.1"]  # the redirecting server only


def test_redirect_to_file_uri_is_refused_even_with_a_file_root(base: str, tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"secret")
    with pytest.raises(InvalidUrl, match="scheme 'file'"):
        fetch(f"{base}/to?file://{tmp_path}/secret", tmp_path / "m", policy(file_root=tmp_path))


@pytest.mark.parametrize("run", [fetch, fetch_to_file_sync])
def test_declared_length_over_limit_is_refused_before_reading(
    run: Callable[..., Fetched], base: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    with pytest.raises(MediaTooLarge, match="declares 1000000000 bytes"):
        run(f"{base}/declared-huge", tmp_path / "m", policy())
    assert time.monotonic() - started < 2
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("run", [fetch, fetch_to_file_sync])
def test_streamed_bytes_over_limit_are_refused_and_partial_file_removed(
    run: Callable[..., Fetched], base: str, tmp_path: Path
) -> None:
    dest = tmp_path / "m"
    with pytest.raises(MediaTooLarge, match=str(LIMIT)):
        run(f"{base}/huge", dest, policy())
    assert not dest.exists()


def test_truncated_body_fails_and_is_removed(base: str, tmp_path: Path) -> None:
    with pytest.raises(FetchFailed):
        fetch(f"{base}/truncated", tmp_path / "m", policy())
    assert not (tmp_path / "m").exists()


def test_bytes_beyond_content_length_are_never_read(base: str, tmp_path: Path) -> None:
    got = fetch(f"{base}/longer", tmp_path / "m", policy())
    assert got.path.read_bytes() == b"y" * 10


@pytest.mark.parametrize("run", [fetch, fetch_to_file_sync])
@pytest.mark.parametrize("route", ["drip", "stall"])
def test_whole_download_deadline(run: Callable[..., Fetched], route: str, base: str, tmp_path: Path) -> None:
    """A body that trickles (or stops) forever ends at the deadline; the sync twin may add one read wait."""
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        run(f"{base}/{route}", tmp_path / "m", policy(timeout_seconds=0.5))
    assert time.monotonic() - started < (0.9 if run is fetch else 1.4)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("status", [404, 500, 403])
def test_http_error_status_fails_with_status_and_without_query(
    status: int, base: str, tmp_path: Path
) -> None:
    with pytest.raises(FetchFailed, match=f"HTTP {status}") as info:
        fetch(f"{base}/status/{status}?X-Amz-Signature=secret", tmp_path / "m", policy())
    assert "secret" not in info.value.message
    # 5xx may pass (the worker retries it); a 4xx is the URL's answer for good.
    assert classify(info.value).fault is (Fault.TRANSIENT if status >= 500 else Fault.EVENT)


def test_empty_body_is_empty_media(base: str, tmp_path: Path) -> None:
    with pytest.raises(EmptyMedia):
        fetch(f"{base}/empty", tmp_path / "m", policy())
    assert not (tmp_path / "m").exists()


def test_connection_refused_is_fetch_failed(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    with pytest.raises(FetchFailed, match="could not connect") as info:
        fetch(f"http://127.0.0.1:{free}/x", tmp_path / "m", policy())
    assert isinstance(info.value, SourceUnavailable) and classify(info.value).fault is Fault.TRANSIENT


# --- https: pinned address, TLS verified against the hostname ---------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate for media.example it signed (ca.pem, leaf.pem, leaf.key)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    (d / "ext").write_text(
        "subjectAltName=DNS:media.example\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n"
        "extendedKeyUsage=serverAuth\nauthorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n"
    )
    for cmd in (
        ["req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=test CA"],
        ["req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=media.example"],
        ["x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out"],
    ):
        if cmd[0] == "x509":
            cmd += ["leaf.pem", "-days", "1", "-extfile", "ext"]
        subprocess.run(["openssl", *cmd], cwd=d, check=True, capture_output=True, timeout=30)
    return d / "ca.pem", d / "leaf.pem", d / "leaf.key"


@pytest.fixture(scope="module")
def tls_server(tls: tuple[Path, Path, Path]) -> Iterator[tuple[int, list[str | None]]]:
    """An HTTPS server on 127.0.0.1 that records the SNI name of every handshake."""
    _, leaf, key = tls
    names: list[str | None] = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(leaf, key)
    context.sni_callback = lambda _sock, name, _ctx: names.append(name)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    for port_ in _serve(server):
        yield port_, names


def test_https_sends_sni_and_verifies_the_hostname(
    tls: tuple[Path, Path, Path], tls_server: tuple[int, list[str | None]], tmp_path: Path, fake_dns: FakeDns
) -> None:
    tls_port, names = tls_server
    fake_dns({"media.example": ["127.0.0.1"], "other.example": ["127.0.0.1"]})
    trusted = policy(ssl_context=ssl.create_default_context(cafile=str(tls[0])))
    got = fetch(f"https://media.example:{tls_port}/host", tmp_path / "h", trusted)
    assert got.path.read_bytes() == f"media.example:{tls_port}".encode()
    assert names[-1] == "media.example"
    with pytest.raises(FetchFailed, match="Hostname mismatch"):  # same address, certificate for another name
        fetch_to_file_sync(f"https://other.example:{tls_port}/file", tmp_path / "o", trusted)
    with pytest.raises(FetchFailed, match="certificate verify failed"):  # a CA we do not trust
        fetch(f"https://media.example:{tls_port}/file", tmp_path / "u", policy())


# --- URL checks (no connection at all) --------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://localhost/",  # /etc/hosts, not DNS
        "http://169.254.169.254/latest/meta-data/",
        "http://10.1.2.3/",
        "http://172.16.0.1/",
        "http://192.168.1.1/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://[::]/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:169.254.169.254]/",
        "http://[fe80::1]/",
        "http://[fc00::1]/",
        "http://[fd12:3456::1]/",
        "http://[64:ff9b::a00:1]/",  # NAT64 of 10.0.0.1
        "http://[2002:a00:1::1]/",  # 6to4 of 10.0.0.1
        "http://[ff02::1]/",
        "http://224.0.0.1/",
        "http://240.0.0.1/",
        "http://2130706433/",
        "http://0x7f.1/",
        "http://0x7f000001/",
        "http://127.1/",
        "http://127.0.0.1./",
        "https://LOCALHOST:8443/x",
    ],
)
def test_non_public_addresses_are_refused(url: str, connects: list[str]) -> None:
    with pytest.raises(UrlNotAllowed):
        check_url(url, policy(allow_hosts=[]))
    with pytest.raises(UrlNotAllowed):
        check_callback_url(url, policy(allow_hosts=[]))
    assert connects == []


def test_fetch_refuses_before_connecting(tmp_path: Path, connects: list[str]) -> None:
    with pytest.raises(UrlNotAllowed):
        fetch("http://169.254.169.254/latest/meta-data/", tmp_path / "m", policy())
    assert connects == []


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/a.mp4",
        "gopher://example.com/",
        "file:///etc/passwd",  # no file root
        "javascript:alert(1)",
        "data:video/mp4;base64,AAAA",
        "dict://127.0.0.1:11211/",
        "example.com/a.mp4",
        "",
    ],
)
def test_other_schemes_are_invalid(url: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidUrl):
        check_url(url, policy())
    with pytest.raises(InvalidUrl):
        fetch(url, tmp_path / "m", policy())


def test_s3_is_refused_where_no_object_store_is_configured(tmp_path: Path) -> None:
    with pytest.raises(InvalidUrl, match="not enabled"):  # the real store: tests/test_s3_sources.py
        fetch("s3://bucket/key.mp4", tmp_path / "m", policy())


@pytest.mark.parametrize(
    "url",
    [
        "http://user:pass@example.com/",
        "http://user@example.com/",
        "http://@example.com/",
        "http://example.com@127.0.0.1/",
        "http://evil.example\\@127.0.0.1/",
        "http:///path",
        "http:example.com/path",
        "http://exa mple.com/",
        "http://example.com/\nHost: internal",
        "http://%31%32%37.0.0.1/",
        "http://1.2.3.4.5/",
        "http://256.0.0.1/",
        "http://[fe80::1%25eth0]/",
        "http://[::1/",
        "http://example.com:0/",
        "http://example.com:99999/",
        "http://" + "a" * 9000 + ".com/",
    ],
)
def test_malformed_urls_are_invalid(url: str, fake_dns: FakeDns) -> None:
    asked = fake_dns({})
    with pytest.raises(InvalidUrl):
        check_url(url, policy(allow_hosts=[]))
    assert asked == []


def test_any_private_address_among_several_refuses(fake_dns: FakeDns) -> None:
    fake_dns({"mixed.example": ["93.184.216.34", "2606:2800:220:1::1", "10.0.0.7"]})
    with pytest.raises(UrlNotAllowed, match="private"):
        check_url("https://mixed.example/v.mp4", policy(allow_hosts=[]))


def test_public_names_pass_with_every_address(fake_dns: FakeDns) -> None:
    fake_dns({"cdn.example": ["93.184.216.34", "2606:2800:220:1::1"]})
    resolved = check_url("https://cdn.example/v.mp4?sig=1#frag", policy(allow_hosts=[]))
    assert resolved.url == "https://cdn.example/v.mp4?sig=1"
    assert (resolved.host, resolved.port, resolved.target) == ("cdn.example", 443, "/v.mp4?sig=1")
    assert resolved.pinned_url() == "https://93.184.216.34:443/v.mp4?sig=1"
    assert (resolved.host_header, resolved.extensions) == ("cdn.example", {"sni_hostname": "cdn.example"})
    assert [str(a) for a in resolved.addresses] == ["93.184.216.34", "2606:2800:220:1::1"]


def test_unresolvable_host_is_fetch_failed(fake_dns: FakeDns) -> None:
    fake_dns({})
    with pytest.raises(FetchFailed, match="cannot resolve"):
        check_url("https://no-such-host.example/", policy())


def test_allow_hosts_by_name_and_by_cidr(fake_dns: FakeDns) -> None:
    fake_dns({"store.internal": ["10.0.0.5"], "other.internal": ["10.9.9.9"]})
    assert (
        check_url("http://store.internal/a", policy(allow_hosts=["store.internal"])).host == "store.internal"
    )
    with pytest.raises(UrlNotAllowed):
        check_url("http://other.internal/a", policy(allow_hosts=["store.internal"]))
    assert check_url("http://other.internal/a", policy(allow_hosts=["10.0.0.0/8"])).port == 80
    with pytest.raises(UrlNotAllowed):  # a /32 allows exactly one address
        check_url("http://127.0.0.2/", policy(allow_hosts=["127.0.0.1/32"]))
    assert check_url("http://[::1]/", policy(allow_hosts=["[::1]"])).host_header == "[::1]"


def test_https_only_policy_refuses_http() -> None:
    with pytest.raises(InvalidUrl):
        check_url("http://93.184.216.34/", policy(schemes=frozenset({"https"})))
    assert check_url("https://93.184.216.34/", policy(schemes=frozenset({"https"}))).scheme == "https"


def test_policy_from_settings(tmp_path: Path) -> None:
    s = Settings(
        max_media_bytes=1234,
        fetch_timeout_seconds=7,
        fetch_connect_timeout_seconds=2,
        fetch_max_redirects=1,
        fetch_allow_hosts=["store.internal", "10.0.0.0/8"],
        file_uri_root=tmp_path,
    )
    p = FetchPolicy.from_settings(s)
    assert (p.max_bytes, p.timeout_seconds, p.connect_timeout_seconds, p.max_redirects) == (1234, 7, 2, 1)
    assert (p.allow_hosts, p.file_root) == (("store.internal", "10.0.0.0/8"), tmp_path)
    with pytest.raises(ValueError, match="allow_hosts"):
        policy(allow_hosts=["10.0.0.0/33"])


_URL_STARTS = ["http://", "https://", "HTTP://", "http:", "//", "file://", "s3://", "http://[", "http://0x"]


@settings(deadline=None, database=None, max_examples=300)
@given(
    st.one_of(
        st.text(max_size=80),
        st.builds(lambda start, rest: start + rest, st.sampled_from(_URL_STARTS), st.text(max_size=60)),
        st.builds(
            lambda host, path: f"http://{host}/{path}",
            st.from_regex(r"[0-9a-fA-Fx.:\[\]%@]{0,24}", fullmatch=True),
            st.text(max_size=10),
        ),
    )
)
@example("http://[::ffff:7f00:1]/")
@example("http://0x.0x.0x.0x/")
@example("http://.../")
@example("http://1.1.1.1.1/")
@example("http://\u0130.example/")  # a non-ASCII host IDNA cannot encode
def test_check_url_only_raises_moderation_errors(url: str) -> None:
    """Arbitrary input passes only as a public IP literal, else raises a ModerationError; no real DNS."""
    with pytest.MonkeyPatch.context() as mp:  # every name resolves to a private and a public address
        mp.setattr(socket, "getaddrinfo", _fake_getaddrinfo({}, [], default=["93.184.216.34", "10.0.0.1"]))
        try:
            resolved = check_url(url, policy(allow_hosts=[]))
        except ModerationError:
            return
    assert len(resolved.addresses) == 1
    assert resolved.addresses[0].is_global and not resolved.addresses[0].is_multicast


@settings(deadline=None, database=None)
@given(st.ip_addresses(v=4))
def test_embedded_ipv4_is_judged_like_the_ipv4_address(address: ipaddress.IPv4Address) -> None:
    def refused(url: str) -> bool:
        try:
            check_url(url, policy(allow_hosts=[]))
        except UrlNotAllowed:
            return True
        return False

    expected = refused(f"http://{address}/")
    value = int(address)
    assert refused(f"http://[::ffff:{address}]/") == expected
    assert refused(f"http://[64:ff9b::{value >> 16:x}:{value & 0xFFFF:x}]/") == expected
    assert refused(f"http://{value}/") == expected  # the WHATWG one-number form
    if expected:
        assert refused(f"http://[2002:{value >> 16:x}:{value & 0xFFFF:x}::1]/")


# --- file:// ----------------------------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "sub").mkdir(parents=True)
    (r / "sub" / "clip.mp4").write_bytes(PAYLOAD)
    (r / "empty.mp4").write_bytes(b"")
    (tmp_path / "outside.mp4").write_bytes(b"outside")
    (r / "escape.mp4").symlink_to(tmp_path / "outside.mp4")
    (r / "inner.mp4").symlink_to(r / "sub" / "clip.mp4")
    return r


@pytest.mark.parametrize("run", [fetch, fetch_to_file_sync])
def test_file_uri_inside_root(run: Callable[..., Fetched], root: Path, tmp_path: Path) -> None:
    got = run(f"file://{root}/sub/clip.mp4", tmp_path / "m", policy(file_root=root))
    assert (got.size, got.sha256, got.final_url) == (
        len(PAYLOAD),
        PAYLOAD_SHA256,
        f"file://{root}/sub/clip.mp4",
    )
    got = run(f"file://localhost{root}/inner.mp4", tmp_path / "m", policy(file_root=root))
    assert got.final_url == f"file://{root}/sub/clip.mp4"  # symlinks inside the root are fine


@pytest.mark.parametrize(
    "path",
    ["/sub/../../outside.mp4", "/sub/%2e%2e/%2e%2e/outside.mp4", "/escape.mp4", "/../../../../etc/passwd"],
)
def test_file_uri_outside_root_is_refused(path: str, root: Path, tmp_path: Path) -> None:
    with pytest.raises(UrlNotAllowed):
        fetch(f"file://{root}{path}", tmp_path / "m", policy(file_root=root))
    assert not (tmp_path / "m").exists()


def test_file_uri_errors(root: Path, tmp_path: Path) -> None:
    os.mkfifo(root / "fifo")
    pol = policy(file_root=root)
    cases: list[tuple[str, type[ModerationError]]] = [
        (f"file://{root}/missing.mp4", MediaNotFound),
        (f"file://{root}/sub", MediaNotFound),  # a directory
        (f"file://{root}/fifo", MediaNotFound),  # would block a naive open()
        (f"file://{root}/empty.mp4", EmptyMedia),
        (f"file://elsewhere{root}/sub/clip.mp4", InvalidUrl),
    ]
    for url, error in cases:
        with pytest.raises(error):
            fetch_to_file_sync(url, tmp_path / "m", pol)
        assert not (tmp_path / "m").exists()
    with pytest.raises(MediaTooLarge):
        fetch_to_file_sync(
            f"file://{root}/sub/clip.mp4", tmp_path / "m", policy(file_root=root, max_bytes=100)
        )
    with pytest.raises(InvalidUrl):  # the scheme can be switched off even with a root
        fetch_to_file_sync(
            f"file://{root}/sub/clip.mp4",
            tmp_path / "m",
            policy(file_root=root, schemes=frozenset({"http", "https"})),
        )
