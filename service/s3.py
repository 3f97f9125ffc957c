"""`s3://bucket/key` sources: parsing, the tenant's bucket allow-list, a streamed GetObject, and the endpoint
probe. `service/sources.py` dispatches here and writes the bytes (size limit, deadline, digest).

Decisions:

* Off unless `DFG_S3_ENABLED`. The store is AWS, or an S3-compatible one at `DFG_S3_ENDPOINT_URL`. Credentials
  are never dfguard settings: boto3's standard chain reads them (environment, `AWS_PROFILE` and the shared
  config/credentials files, web identity, container and instance roles), and rotates refreshable ones.
* Parsing is strict: the bucket follows the general-purpose naming rules (`config.s3_bucket_problem`), with
  no userinfo or port; the key is everything after the bucket's `/`, taken literally as the AWS CLI takes it
  (no percent-decoding; `?` and `#` are part of it), 1 to 1024 UTF-8 bytes. Malformed: `invalid_url`.
* Allow-list: a tenant reads only the buckets `DFG_S3_BUCKETS` names for it or for `*`; any other bucket is
  `url_not_allowed` before a request is made, so a tenant cannot make dfguard read another tenant's media.
* One client per process (boto3 clients are thread-safe), signed V4, with botocore's *standard* retry mode
  (`DFG_S3_MAX_ATTEMPTS` tries with jittered backoff on throttling, 5xx and connection errors) inside the
  fetch; what still fails is mapped once, in `_translate`:

  | store says | error | worker |
  |---|---|---|
  | `NoSuchKey`, `NoSuchBucket`, 404 | `MediaNotFound` | DLQ |
  | `AccessDenied`, other 403 | `ObjectAccessDenied` (`access_denied`) | DLQ (grant, then replay) |
  | `InvalidAccessKeyId`, `SignatureDoesNotMatch`, no credentials | `ObjectStoreUnavailable` | hold |
  | no connection (refused, connect timeout) | `ObjectStoreUnavailable` | hold while the probe fails |
  | throttling, 5xx, read timeout, a broken body | `SourceUnavailable` | bounded retries, then DLQ |
  | other 4xx (e.g. an archived object) | `FetchFailed` | DLQ |

  dfguard's own credentials being refused is an outage, not the event's fault: every object would fail alike.
* The endpoint probe (`check_endpoint`) is one signed ListBuckets, one try, bounded by the probe timeout. Any
  answer of the S3 API means the store serves, `AccessDenied` included (dfguard needs no ListBuckets
  permission); no answer, a 5xx, or dfguard's credentials refused means down, so the worker holds.
* Size: a `ContentLength` over the limit is refused before the body is read; the body is then counted as it
  streams (`sources._Sink`), so a store that sends more than it declared is cut at the limit too.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import boto3
from botocore import exceptions as boto_errors
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from service.config import DEFAULT_TENANT, Settings, s3_bucket_problem
from service.errors import (
    FetchFailed,
    InvalidUrl,
    MediaNotFound,
    MediaTooLarge,
    ModerationError,
    ObjectAccessDenied,
    ObjectStoreUnavailable,
    SourceUnavailable,
    UrlNotAllowed,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import GetObjectOutputTypeDef

__all__ = ["S3Access", "S3Location", "S3Object", "parse_s3_uri"]

_PREFIX = "s3://"
_MAX_KEY_BYTES = 1024
_CHUNK_BYTES = 64 * 1024
_NOT_FOUND = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404"})
_OWN_CREDENTIALS = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidToken",
        "TokenRefreshRequired",
    }
)
_THROTTLED = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded"})


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"{_PREFIX}{self.bucket}/{self.key}"


def parse_s3_uri(url: str) -> S3Location:
    """`s3://bucket/key` -> its bucket and key; `InvalidUrl` for anything else (see the module docstring)."""
    if url[:5].lower() != _PREFIX:
        raise InvalidUrl("an s3 URI starts with s3://")
    bucket, slash, key = url[5:].partition("/")
    if "@" in bucket or ":" in bucket:
        raise InvalidUrl("an s3:// URI names a bucket only: no credentials (user@) and no port")
    if (problem := s3_bucket_problem(bucket)) is not None:
        raise InvalidUrl(f"s3:// bucket {bucket[:80]!r} is not a bucket name: {problem}")
    if not slash or not key:
        raise InvalidUrl("an s3:// URI must name an object: s3://bucket/key")
    if key.startswith("/") or any(part in (".", "..") for part in key.split("/")):
        # Sent as is in a path-style request, `..` could be normalised by the store or a proxy in front of
        # it into another bucket, past the allow-list that checked this one.
        raise InvalidUrl("an s3:// key may not start with / or have . or .. segments")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate
        raise InvalidUrl("the s3:// key is not valid UTF-8") from None
    if size > _MAX_KEY_BYTES:
        raise InvalidUrl(f"the s3:// key has {size} bytes; S3 keys have at most {_MAX_KEY_BYTES}")
    return S3Location(bucket, key)


@dataclass(frozen=True)
class S3Object:
    """An object whose head has arrived: iterate `chunks()` once (errors translated), then `close()`."""

    location: S3Location
    size: int | None
    content_type: str | None
    _response: GetObjectOutputTypeDef

    def chunks(self) -> Iterator[bytes]:
        try:
            yield from self._response["Body"].iter_chunks(_CHUNK_BYTES)
        except (BotoCoreError, OSError, ValueError) as exc:  # read timeout, reset, a short body
            raise _translate(exc, self.location) from exc

    def close(self) -> None:
        """Release the connection (also when the body was not read to its end)."""
        self._response["Body"].close()


class S3Access:
    """The configured store: the allow-list, a fetching client and a probing client (both thread-safe)."""

    def __init__(self, settings: Settings) -> None:
        self.buckets = {tenant: frozenset(names) for tenant, names in settings.s3_buckets.items()}
        # Blocking boto3 reads run here, not in the event loop's default executor, which DNS and callback
        # checks share: slow objects must not queue everyone else's URL fetches behind them.
        self.executor = ThreadPoolExecutor(
            max(4, settings.max_uploads, settings.worker_concurrency), thread_name_prefix="dfguard-s3"
        )
        session = boto3.session.Session(region_name=settings.s3_region)
        self.client = _client(
            session,
            settings,
            timeout=settings.fetch_timeout_seconds,
            connect_timeout=settings.fetch_connect_timeout_seconds,
            attempts=settings.s3_max_attempts,
            pool=max(10, settings.max_uploads, settings.worker_concurrency),
        )
        probe_timeout = settings.worker_probe_timeout_seconds
        self.probe_client = _client(
            session, settings, timeout=probe_timeout, connect_timeout=probe_timeout, attempts=1, pool=2
        )

    def allowed(self, tenant: str, bucket: str) -> bool:
        """Whether `tenant` may read `bucket`: named for the tenant itself or for every tenant (`*`)."""
        return bucket in self.buckets.get(tenant, ()) or bucket in self.buckets.get(DEFAULT_TENANT, ())

    def locate(self, url: str, tenant: str | None) -> S3Location:
        """Parse `url` and apply `tenant`'s allow-list (None: no tenant, so no bucket)."""
        location = parse_s3_uri(url)
        if tenant is None or not self.allowed(tenant, location.bucket):
            raise UrlNotAllowed(
                f"bucket {location.bucket!r} is not one tenant {tenant!r} may read (DFG_S3_BUCKETS)"
            )
        return location

    def open(self, location: S3Location, max_bytes: int) -> S3Object:
        """GetObject's head: refuses a declared size over `max_bytes` before reading the body."""
        try:
            response = self.client.get_object(Bucket=location.bucket, Key=location.key)
        except (BotoCoreError, ClientError) as exc:
            raise _translate(exc, location) from exc
        size = response.get("ContentLength")
        if size is not None and size > max_bytes:
            response["Body"].close()
            raise MediaTooLarge(f"{location.uri} has {size} bytes; the limit is {max_bytes}")
        return S3Object(location, size, response.get("ContentType"), response)

    def check_endpoint(self) -> None:
        """The `object_store` health probe: returns while the S3 API answers, raises while it does not."""
        try:
            self.probe_client.list_buckets()
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            code = exc.response.get("Error", {}).get("Code", "")
            if status >= 500 or code in _OWN_CREDENTIALS:
                raise ObjectStoreUnavailable(f"the S3 endpoint answers {status} {code}") from exc
        except (BotoCoreError, OSError) as exc:
            raise ObjectStoreUnavailable(f"the S3 endpoint does not answer: {exc}") from exc


def _client(
    session: boto3.session.Session,
    settings: Settings,
    *,
    timeout: float,
    connect_timeout: float,
    attempts: int,
    pool: int,
) -> S3Client:
    """An S3 client of the configured endpoint, signed V4, with its own timeouts, retries and pool."""
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": settings.s3_addressing_style},
        user_agent_extra="dfguard",
        connect_timeout=connect_timeout,
        read_timeout=timeout,
        retries={"mode": "standard", "total_max_attempts": attempts},
        max_pool_connections=pool,
    )
    return session.client("s3", endpoint_url=settings.s3_endpoint_url, config=config)


def _translate(exc: BaseException, location: S3Location) -> ModerationError:
    """One failure of a GetObject (or of reading its body) as the error taxonomy sees it; table above."""
    where = location.uri[:300]
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        said = f"{status} {code}".strip()
        if code in _NOT_FOUND or status == 404:
            return MediaNotFound(f"no such object: {where}")
        if code in _OWN_CREDENTIALS:
            return ObjectStoreUnavailable(f"the object store refuses dfguard's credentials ({said})")
        if code == "AccessDenied" or status == 403:
            return ObjectAccessDenied(f"the object store denies dfguard access to {where} ({said})")
        if code in _THROTTLED or status >= 500 or status in (408, 429):
            return SourceUnavailable(f"the object store failed to serve {where} ({said})")
        return FetchFailed(f"the object store refused {where} ({said})")
    if isinstance(exc, boto_errors.NoCredentialsError | boto_errors.PartialCredentialsError):
        return ObjectStoreUnavailable(f"no usable AWS credentials for the object store: {exc}")
    if isinstance(exc, boto_errors.EndpointConnectionError | boto_errors.ConnectTimeoutError):
        return ObjectStoreUnavailable(f"the object store does not answer: {exc}")
    if isinstance(exc, BotoCoreError | OSError | ValueError):
        return SourceUnavailable(f"reading {where} failed: {type(exc).__name__}: {exc}")
    return SourceUnavailable(f"reading {where} failed: {type(exc).__name__}")
