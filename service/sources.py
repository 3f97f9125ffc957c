"""Fetch media named by a URI into a local file, with SSRF checks and hard limits.

Used by both the HTTP gateway (`url` requests, callback URLs) and the Kafka worker (event URIs), so it imports
nothing of theirs: `fetch_to_file` for asyncio callers, `fetch_to_file_sync` for threads.

Decisions:

* Schemes: `http`/`https` (SSRF-checked), `file` only under `FetchPolicy.file_root`, `s3://bucket/key` only
  when the policy has an object store (`DFG_S3_ENABLED`; `service/s3.py`: parsing, the caller's tenant's
  bucket allow-list, the store's errors) and is given the tenant. Anything else is `InvalidUrl`. Redirects
  may only lead to `http`/`https`.
* Parsing is strict rather than forgiving: no whitespace, control characters or backslashes anywhere, no
  userinfo (not even an empty `@`), no IPv6 zone ids, hostnames limited to LDH labels (after IDNA). A host
  that ends in a number is an IPv4 address as the WHATWG URL standard reads it (`2130706433`, `0x7f.1`,
  `127.1` are all 127.0.0.1), parsed here instead of being handed to the platform resolver; httpx itself
  refuses dotted quads with leading zeros.
* Address check: every address the host resolves to (`getaddrinfo`, IPv4 and IPv6) must be public unicast;
  one bad address refuses the URL (a resolver may hand out any of them). IPv4-mapped and NAT64 (64:ff9b::/96)
  addresses are judged by the IPv4 address they embed, 6to4 by its embedded address and its own. Entries of
  `allow_hosts` (hostnames, IPs or CIDRs) exempt a host or an address from the refusal.
* Pinning (DNS rebinding): each hop connects to the address that was checked, never re-resolving: the request
  goes to `scheme://<ip>:<port>/...` with the original `Host` header and, for https, `sni_hostname` set to the
  original host, so TLS still verifies the certificate against the hostname. The first address is used, in
  `getaddrinfo`'s RFC 6724 order (no fallback to the others). `trust_env=False`: an environment proxy would
  undo the pinning. Keep-alive is off and cookies are dropped between hops, so a connection or cookie made for
  one host is never reused for another one sharing its address.
* Redirects are followed here, not by httpx, so that every `Location` (resolved against the URL that sent it)
  goes through the same checks before anything connects to it; at most `max_redirects` of them.
* Limits: a declared `Content-Length` above `max_bytes` is refused before the body is read, and the streamed
  (decoded) bytes are counted as they arrive, so the body is never held in memory and never exceeds the limit
  on disk; `Accept-Encoding: identity` keeps servers from compressing. The sha256 is computed while streaming.
  A failed fetch removes the partial file.
* Deadline: `timeout_seconds` bounds the whole fetch (DNS, every hop, the body). The async path enforces it
  exactly with `asyncio.timeout`. The sync path gives each hop the budget left and checks it after every
  chunk, so a peer that stalls mid-body can overrun it by at most one read wait; its DNS lookup is bounded
  only by the system resolver's own timeout (checked right after).
* `file://`: the path is percent-decoded, then resolved (symlinks, `..`) before the containment check, and
  opened with O_NOFOLLOW (a last component swapped for a link after the check is refused) and O_NONBLOCK (a
  FIFO cannot hang the caller); only regular files are read, with the same size limit and digest.
* Error messages never include query strings (presigned URLs carry credentials) nor the private addresses a
  name resolved to (they would map internal DNS for the caller). Local disk errors are not wrapped: they are
  infrastructure failures, not properties of the URL.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import os
import re
import socket
import ssl
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO, Literal, TypedDict
from urllib.parse import unquote, urlsplit

import httpx

from service.config import Settings
from service.errors import (
    DeadlineExceeded,
    EmptyMedia,
    FetchFailed,
    InvalidUrl,
    MediaNotFound,
    MediaTooLarge,
    ModerationError,
    SourceUnavailable,
    UrlNotAllowed,
)

if TYPE_CHECKING:
    from service.s3 import S3Access

__all__ = [
    "FetchPolicy",
    "Fetched",
    "ResolvedUrl",
    "check_callback_url",
    "check_url",
    "fetch_to_file",
    "fetch_to_file_sync",
]

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

_HTTP_SCHEMES = frozenset({"http", "https"})
_SUPPORTED_SCHEMES = frozenset({"http", "https", "file"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CHUNK_BYTES = 64 * 1024
_MAX_URL_CHARS = 8192
_HEADERS = {"User-Agent": "dfguard-fetch/1", "Accept": "*/*", "Accept-Encoding": "identity"}
_NO_KEEPALIVE = httpx.Limits(max_keepalive_connections=0)

_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_FORBIDDEN_CHARS_RE = re.compile(r"[\x00-\x20\x7f\\]")
_LABEL_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_CGNAT = IPv4Network("100.64.0.0/10")  # RFC 6598 shared address space
_NAT64_WELL_KNOWN = IPv6Network("64:ff9b::/96")  # RFC 6052: the low 32 bits are an IPv4 address
_NAT64_LOCAL = IPv6Network("64:ff9b:1::/48")  # RFC 8215: local-use translation, embedding unknowable


@dataclass(frozen=True)
class FetchPolicy:
    """Everything that bounds one fetch; built once from `Settings` and shared by gateway and worker."""

    max_bytes: int
    timeout_seconds: float
    connect_timeout_seconds: float = 5.0
    max_redirects: int = 3
    allow_hosts: Sequence[str] = ()
    file_root: Path | None = None
    schemes: frozenset[str] = _SUPPORTED_SCHEMES
    ssl_context: ssl.SSLContext | None = None  # None: httpx's default trust store (certifi)
    s3: S3Access | None = field(default=None, repr=False, compare=False)  # None: s3:// URIs are refused
    _allow_names: frozenset[str] = field(init=False, repr=False, compare=False)
    _allow_networks: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        if self.timeout_seconds <= 0 or self.connect_timeout_seconds <= 0:
            raise ValueError("timeouts must be positive")
        if self.max_redirects < 0:
            raise ValueError("max_redirects must not be negative")
        if not self.schemes <= _SUPPORTED_SCHEMES:
            raise ValueError(f"unsupported schemes: {sorted(self.schemes - _SUPPORTED_SCHEMES)}")
        names: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in self.allow_hosts:
            text = entry.strip().lower().removeprefix("[").removesuffix("]")
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                if "/" in text or ":" in text or not text:
                    raise ValueError(
                        f"allow_hosts entry {entry!r} is neither a hostname nor a CIDR"
                    ) from None
                names.add(text.rstrip("."))
        object.__setattr__(self, "allow_hosts", tuple(self.allow_hosts))
        object.__setattr__(self, "schemes", frozenset(self.schemes))
        object.__setattr__(self, "_allow_names", frozenset(names))
        object.__setattr__(self, "_allow_networks", tuple(networks))

    @classmethod
    def from_settings(cls, settings: Settings) -> FetchPolicy:
        s3 = None
        if settings.s3_enabled:
            from service.s3 import S3Access  # boto3 is imported only where s3:// is enabled

            s3 = S3Access(settings)
        return cls(
            max_bytes=settings.max_media_bytes,
            timeout_seconds=settings.fetch_timeout_seconds,
            connect_timeout_seconds=settings.fetch_connect_timeout_seconds,
            max_redirects=settings.fetch_max_redirects,
            allow_hosts=tuple(settings.fetch_allow_hosts),
            file_root=settings.file_uri_root,
            s3=s3,
        )

    def _host_allowed(self, host: str) -> bool:
        return host.rstrip(".") in self._allow_names

    def _address_allowed(self, address: IPAddress) -> bool:
        candidates: list[IPAddress] = [address]
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            candidates.append(address.ipv4_mapped)
        return any(c in net for c in candidates for net in self._allow_networks if c.version == net.version)


@dataclass(frozen=True)
class ResolvedUrl:
    """An http(s) URL that passed the checks, with the addresses it was checked against.

    Send to `pinned_url()` with `headers={"Host": host_header}` and `extensions=extensions` (httpx), with
    `trust_env=False`, rather than to `url`: resolving the name again could yield an unchecked address.
    """

    url: str  # normalised, without fragment
    scheme: Literal["http", "https"]
    host: str  # IDNA-encoded hostname or IP literal, no brackets
    port: int
    host_header: str
    target: str  # path and query, as sent
    addresses: tuple[IPAddress, ...]  # all checked; the first is the one connected to

    @property
    def extensions(self) -> dict[str, str]:
        """httpx request extensions: TLS verifies (and SNI names) the host, not the pinned address."""
        return {"sni_hostname": self.host} if self.scheme == "https" else {}

    def pinned_url(self) -> str:
        """The URL with its host replaced by the checked address."""
        address = self.addresses[0]
        literal = f"[{address}]" if address.version == 6 else str(address)
        return f"{self.scheme}://{literal}:{self.port}{self.target}"


@dataclass(frozen=True)
class Fetched:
    """A fetched file: where it is, how big, what the server called it, and its digest."""

    path: Path
    size: int
    content_type: str | None
    final_url: str  # after redirects; for file:// the resolved path
    sha256: str  # hex


def check_url(url: str, policy: FetchPolicy) -> ResolvedUrl:
    """Parse and resolve an http(s) URL, refusing it unless every address is public or allow-listed.

    Raises:
        InvalidUrl: malformed, userinfo, no host, or a scheme other than http/https (or not in the policy).
        UrlNotAllowed: the host is, or resolves to, a non-public address not covered by `allow_hosts`.
        FetchFailed: the host does not resolve.
    """
    return _check_http(url, policy, "URL")


def check_callback_url(url: str, policy: FetchPolicy) -> ResolvedUrl:
    """`check_url` for the gateway's callback URLs: a callback must not reach internal services either.

    The check is only as good as the connection that follows it: deliver to `ResolvedUrl.pinned_url()`.
    """
    return _check_http(url, policy, "callback URL")


async def fetch_to_file(url: str, dest: Path, policy: FetchPolicy, *, tenant: str | None = None) -> Fetched:
    """Fetch `url` into `dest` (created or truncated), enforcing `policy`; `dest` is removed on failure.

    `tenant` is the caller's: an `s3://` URI is read only from a bucket that tenant may read."""
    kind = _dispatch(url, policy)
    if kind == "file":
        return await asyncio.to_thread(_copy_file_uri, url, dest, policy)
    if kind == "s3":  # blocking boto3 in the store's own threads, bounded by its deadline (checked per chunk)
        assert policy.s3 is not None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(policy.s3.executor, _fetch_s3, url, dest, policy, tenant)
    transfer = _HttpTransfer(url, dest, policy)
    try:
        async with (
            asyncio.timeout(policy.timeout_seconds),
            httpx.AsyncClient(**_client_options(policy)) as client,
        ):
            while True:
                resolved = await asyncio.to_thread(check_url, transfer.url, policy)
                response = await client.send(transfer.request(client, resolved), stream=True)
                try:
                    if not transfer.follow(response):
                        with transfer.sink() as sink:
                            async for chunk in response.aiter_bytes():
                                sink.write(chunk)
                            return sink.finish(transfer.url, response.headers.get("content-type"))
                finally:
                    await response.aclose()
    except ModerationError:
        raise
    except (httpx.HTTPError, TimeoutError) as exc:
        raise transfer.translate(exc) from exc


def fetch_to_file_sync(url: str, dest: Path, policy: FetchPolicy, *, tenant: str | None = None) -> Fetched:
    """The blocking twin of `fetch_to_file` for threaded callers (the Kafka worker); same checks."""
    kind = _dispatch(url, policy)
    if kind == "file":
        return _copy_file_uri(url, dest, policy)
    if kind == "s3":
        return _fetch_s3(url, dest, policy, tenant)
    transfer = _HttpTransfer(url, dest, policy)
    try:
        with httpx.Client(**_client_options(policy)) as client:
            while True:
                resolved = check_url(transfer.url, policy)
                response = client.send(transfer.request(client, resolved), stream=True)
                try:
                    if not transfer.follow(response):
                        with transfer.sink() as sink:
                            for chunk in response.iter_bytes():
                                sink.write(chunk)
                            return sink.finish(transfer.url, response.headers.get("content-type"))
                finally:
                    response.close()
    except ModerationError:
        raise
    except (httpx.HTTPError, TimeoutError) as exc:
        raise transfer.translate(exc) from exc


# --- the shared state of one download ---------------------------------------------------------------------


class _ClientOptions(TypedDict):
    follow_redirects: bool
    trust_env: bool
    verify: ssl.SSLContext | bool
    limits: httpx.Limits
    headers: dict[str, str]


def _client_options(policy: FetchPolicy) -> _ClientOptions:
    """Client settings of both drivers: no automatic redirects, no proxies from the environment."""
    return _ClientOptions(
        follow_redirects=False,
        trust_env=False,
        verify=policy.ssl_context or True,
        limits=_NO_KEEPALIVE,
        headers=_HEADERS,
    )


class _HttpTransfer:
    """One http(s) download's state: what both drivers decide, written once; they only do the I/O."""

    def __init__(self, url: str, dest: Path, policy: FetchPolicy) -> None:
        self.url = url  # the logical URL of the current hop, never the pinned one
        self.dest = dest
        self.policy = policy
        self.redirects = 0
        self.deadline = time.monotonic() + policy.timeout_seconds

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self._deadline_error()
        return left

    def request(self, client: httpx.Client | httpx.AsyncClient, resolved: ResolvedUrl) -> httpx.Request:
        """Build the pinned request of this hop, with whatever time budget is left."""
        left = self.remaining()
        client.cookies.clear()
        return client.build_request(
            "GET",
            resolved.pinned_url(),
            headers={"Host": resolved.host_header},
            extensions=resolved.extensions,
            timeout=httpx.Timeout(left, connect=min(self.policy.connect_timeout_seconds, left)),
        )

    def follow(self, response: httpx.Response) -> bool:
        """Decide on a response's head: True to follow its redirect (`url` is updated), False to read it."""
        status = response.status_code
        if status in _REDIRECT_STATUSES:
            location = response.headers.get("location")
            if not location:
                raise FetchFailed(f"{_redact(self.url)} returned HTTP {status} without a Location")
            if self.redirects >= self.policy.max_redirects:
                raise FetchFailed(
                    f"{_redact(self.url)} redirected more than {self.policy.max_redirects} times"
                )
            try:
                self.url = str(httpx.URL(self.url).join(location).copy_with(fragment=None))
            except (httpx.InvalidURL, ValueError, UnicodeError) as exc:
                raise InvalidUrl(f"{_redact(self.url)} redirected to a malformed Location") from exc
            self.redirects += 1
            return True
        if not 200 <= status < 300:
            error = SourceUnavailable if status >= 500 or status in (408, 429) else FetchFailed
            raise error(f"{_redact(self.url)} returned HTTP {status}")
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.policy.max_bytes:
            raise MediaTooLarge(
                f"{_redact(self.url)} declares {int(declared)} bytes; the limit is {self.policy.max_bytes}"
            )
        return False

    def sink(self) -> _Sink:
        return _Sink(self.dest, self.policy.max_bytes, self.deadline, self._deadline_error)

    def translate(self, exc: Exception) -> ModerationError:
        """Map a transport failure to the error taxonomy (most specific first)."""
        where = _redact(self.url)
        expired = time.monotonic() >= self.deadline
        if isinstance(exc, httpx.ConnectTimeout) and not expired:
            return SourceUnavailable(f"timed out connecting to {where}")
        if isinstance(exc, TimeoutError | httpx.TimeoutException):
            return self._deadline_error()
        if isinstance(exc, httpx.ConnectError):
            return SourceUnavailable(f"could not connect to {where}: {exc}")
        return SourceUnavailable(f"fetching {where} failed: {type(exc).__name__}: {exc}")

    def _deadline_error(self) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"fetching {_redact(self.url)} took longer than {self.policy.timeout_seconds:g} s"
        )


class _Sink:
    """Writes a body to `dest` chunk by chunk with size limit, deadline and digest; removes it on error."""

    def __init__(
        self, dest: Path, max_bytes: int, deadline: float, on_deadline: Callable[[], Exception]
    ) -> None:
        self.dest = dest
        self.max_bytes = max_bytes
        self.deadline = deadline
        self.on_deadline = on_deadline
        self.size = 0
        self.digest = hashlib.sha256()
        self._file: BinaryIO | None = None

    def __enter__(self) -> _Sink:
        self._file = self.dest.open("wb")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._file is not None:
            self._file.close()
        if kind is not None:
            self.dest.unlink(missing_ok=True)

    def write(self, chunk: bytes) -> None:
        assert self._file is not None, "write() outside the with block"
        if self.size + len(chunk) > self.max_bytes:
            raise MediaTooLarge(f"the media exceeds the limit of {self.max_bytes} bytes")
        if time.monotonic() > self.deadline:
            raise self.on_deadline()
        self.size += len(chunk)
        self.digest.update(chunk)
        self._file.write(chunk)

    def finish(self, final_url: str, content_type: str | None) -> Fetched:
        if self.size == 0:
            raise EmptyMedia("the media is empty (0 bytes)")
        return Fetched(self.dest, self.size, content_type, final_url, self.digest.hexdigest())


# --- file:// --------------------------------------------------------------------------------------------


def _copy_file_uri(url: str, dest: Path, policy: FetchPolicy) -> Fetched:
    """Copy a `file://` URI under `policy.file_root` to `dest`, with the size limit and the digest."""
    if policy.file_root is None:
        raise InvalidUrl("file:// URIs are not enabled (no file root is configured)")
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost") or parts.query:
        raise InvalidUrl("a file:// URI must be file:///absolute/path, with no host and no query")
    raw_path = unquote(parts.path, errors="strict")
    if not raw_path.startswith("/") or "\x00" in raw_path:
        raise InvalidUrl("a file:// URI must name an absolute path")
    root = policy.file_root.resolve()
    target = Path(raw_path).resolve()  # follows symlinks and collapses `..` before the containment check
    if not target.is_relative_to(root):
        raise UrlNotAllowed("the file is outside the directory file:// URIs may read")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: a FIFO must not hang us
    try:
        fd = os.open(target, flags)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise MediaNotFound("no such file under the file root") from exc
    except PermissionError as exc:
        raise FetchFailed("the file is not readable") from exc
    except OSError as exc:  # ELOOP: a component became a symlink after resolution
        raise UrlNotAllowed("the file path changed while it was checked") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise MediaNotFound("not a regular file")
        if info.st_size > policy.max_bytes:
            raise MediaTooLarge(f"the file has {info.st_size} bytes; the limit is {policy.max_bytes}")
    except BaseException:
        os.close(fd)
        raise
    deadline = time.monotonic() + policy.timeout_seconds
    with (
        os.fdopen(fd, "rb") as source,
        _Sink(dest, policy.max_bytes, deadline, _file_deadline(policy)) as sink,
    ):
        while chunk := source.read(_CHUNK_BYTES):
            sink.write(chunk)
        return sink.finish(target.as_uri(), None)


def _file_deadline(policy: FetchPolicy) -> Callable[[], Exception]:
    return _deadline("copying the file", policy)


def _deadline(doing: str, policy: FetchPolicy) -> Callable[[], Exception]:
    return lambda: DeadlineExceeded(f"{doing} took longer than {policy.timeout_seconds:g} s")


# --- s3:// --------------------------------------------------------------------------------------------------


def _fetch_s3(url: str, dest: Path, policy: FetchPolicy, tenant: str | None) -> Fetched:
    """Stream an `s3://` object the tenant may read to `dest`, with the size limit, deadline and digest."""
    assert policy.s3 is not None, "dispatched only with an object store"
    location = policy.s3.locate(url, tenant)
    deadline = time.monotonic() + policy.timeout_seconds
    on_deadline = _deadline(f"fetching {location.uri[:300]}", policy)
    try:
        obj = policy.s3.open(
            location, policy.max_bytes
        )  # each try bounded by the read timeout (the deadline)
        try:
            if time.monotonic() > deadline:
                raise on_deadline()
            with _Sink(dest, policy.max_bytes, deadline, on_deadline) as sink:
                for chunk in obj.chunks():
                    sink.write(chunk)
                return sink.finish(location.uri, obj.content_type)
        finally:
            obj.close()
    except SourceUnavailable as exc:  # a read timeout past the deadline is the deadline's, as for http(s)
        if time.monotonic() >= deadline:
            raise on_deadline() from exc
        raise


# --- URL checks -------------------------------------------------------------------------------------------


def _dispatch(url: str, policy: FetchPolicy) -> Literal["http", "file", "s3"]:
    """Route a URI by scheme, refusing schemes the policy does not allow before any work is done."""
    scheme = _scheme_of(url)
    if scheme == "s3":
        if policy.s3 is None:
            raise InvalidUrl("s3:// URIs are not enabled on this service (DFG_S3_ENABLED); use an https URL")
        return "s3"
    if scheme not in policy.schemes:
        raise InvalidUrl(
            f"URI scheme {scheme!r} is not allowed (allowed: {', '.join(sorted(policy.schemes))})"
        )
    return "file" if scheme == "file" else "http"


def _scheme_of(url: str) -> str:
    if len(url) > _MAX_URL_CHARS:
        raise InvalidUrl(f"the URL is longer than {_MAX_URL_CHARS} characters")
    if _FORBIDDEN_CHARS_RE.search(url):
        raise InvalidUrl("the URL contains whitespace, control characters or a backslash")
    match = _SCHEME_RE.match(url)
    if match is None:
        raise InvalidUrl("the URL has no scheme")
    return match.group(1).lower()


def _check_http(url: str, policy: FetchPolicy, what: str) -> ResolvedUrl:
    scheme = _scheme_of(url)
    allowed = _HTTP_SCHEMES & policy.schemes
    if scheme not in allowed:
        raise InvalidUrl(f"{what} scheme {scheme!r} is not allowed (allowed: {', '.join(sorted(allowed))})")
    rest = url[len(scheme) + 1 :]
    if not rest.startswith("//"):
        raise InvalidUrl(f"the {what} has no host")
    authority = re.split(r"[/?#]", rest[2:], maxsplit=1)[0]
    if "@" in authority:
        raise InvalidUrl(f"the {what} must not contain credentials (user@host)")
    try:
        parsed = httpx.URL(url).copy_with(fragment=None)
        raw_host = parsed.raw_host.decode("ascii")
        port = parsed.port
    except (httpx.InvalidURL, ValueError, UnicodeError) as exc:
        raise InvalidUrl(f"malformed {what}: {exc}") from exc
    if not raw_host:
        raise InvalidUrl(f"the {what} has no host")
    if port is not None and not 1 <= port <= 65535:
        raise InvalidUrl(f"the {what} port {port} is out of range")
    effective_port = port or _DEFAULT_PORTS[scheme]
    literal = _ip_literal(raw_host, what)
    addresses = (literal,) if literal is not None else _resolve(raw_host, effective_port)
    if not policy._host_allowed(raw_host):
        for address in addresses:
            reason = _refusal(address)
            if reason is not None and not policy._address_allowed(address):
                shown = raw_host if literal is not None else f"{raw_host!r} resolves to an address that"
                raise UrlNotAllowed(f"{what} host {shown} is {reason}; only public addresses may be fetched")
    return ResolvedUrl(
        url=str(parsed),
        scheme="https" if scheme == "https" else "http",
        host=raw_host,
        port=effective_port,
        host_header=parsed.netloc.decode("ascii"),
        target=parsed.raw_path.decode("ascii"),
        addresses=addresses,
    )


def _ip_literal(host: str, what: str) -> IPAddress | None:
    """The address a host denotes by itself, or None for a name that needs DNS."""
    if ":" in host:
        if "%" in host:
            raise InvalidUrl(f"the {what} host must not carry an IPv6 zone id")
        try:
            return IPv6Address(host)
        except ValueError as exc:
            raise InvalidUrl(f"the {what} host is not a valid IPv6 address") from exc
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(_LABEL_RE.fullmatch(label) for label in labels):
        raise InvalidUrl(f"the {what} host is not a valid hostname")
    return _whatwg_ipv4(labels, what)


def _whatwg_ipv4(labels: list[str], what: str) -> IPv4Address | None:
    """Read a host ending in a number as the WHATWG URL standard's IPv4 parser does (inet_aton forms)."""
    last = labels[-1]
    if not (last.isdigit() or (last[:2] == "0x" and all(c in "0123456789abcdef" for c in last[2:]))):
        return None
    if len(labels) > 4:
        raise InvalidUrl(f"the {what} host is not a valid IPv4 address")
    numbers = [_ipv4_number(label, what) for label in labels]
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise InvalidUrl(f"the {what} host is not a valid IPv4 address")
    value = numbers[-1] + sum(n << (8 * (3 - i)) for i, n in enumerate(numbers[:-1]))
    return IPv4Address(value)


def _ipv4_number(label: str, what: str) -> int:
    try:
        if label[:2] == "0x":
            return int(label[2:] or "0", 16)
        if len(label) > 1 and label.startswith("0"):
            return int(label[1:], 8)
        return int(label, 10)
    except ValueError:
        raise InvalidUrl(f"the {what} host is not a valid IPv4 address") from None


def _resolve(host: str, port: int) -> tuple[IPAddress, ...]:
    """Every address `host` resolves to, in the resolver's order (IPv4 and IPv6)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise FetchFailed(f"cannot resolve host {host!r}") from exc
    addresses: dict[IPAddress, None] = {}
    for family, _type, _proto, _name, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            addresses[ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])] = None
    if not addresses:
        raise FetchFailed(f"host {host!r} has no IPv4 or IPv6 address")
    return tuple(addresses)


def _refusal(address: IPAddress) -> str | None:
    """Why `address` must not be contacted, or None for a public unicast address."""
    if isinstance(address, IPv6Address):
        if address.ipv4_mapped is not None:
            inner = _refusal(address.ipv4_mapped)
            return None if inner is None else f"{inner} (IPv4-mapped)"
        if address in _NAT64_WELL_KNOWN:
            inner = _refusal(IPv4Address(int(address) & 0xFFFF_FFFF))
            return None if inner is None else f"{inner} (behind NAT64)"
        if address in _NAT64_LOCAL:
            return "a local-use NAT64 address"
        if address.sixtofour is not None and (inner := _refusal(address.sixtofour)) is not None:
            return f"{inner} (6to4)"
        if address.is_site_local:
            return "a site-local address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address (this includes cloud metadata endpoints)"
    if address.is_multicast:
        return "a multicast address"
    if address.is_private:
        return "a private address"
    if isinstance(address, IPv4Address) and address in _CGNAT:
        return "a shared (carrier-grade NAT) address"
    if address.is_reserved or not address.is_global:
        return "a reserved address"
    return None


def _redact(url: str) -> str:
    """The URL without query and fragment (they may carry credentials), for error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "the URL"
    return f"{parts.scheme}://{parts.netloc}{parts.path}"[:300]
