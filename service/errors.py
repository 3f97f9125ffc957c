"""Error taxonomy: every failure dfguard reports is a class with a stable code, an HTTP status and a fault
kind, and one pure function, `classify`, turns any exception into what happens next. The gateway (status and
code), the Kafka worker (flag, dead letter, retry or hold) and docs/worker.md's outcomes table all read it.

    ModerationError                                   fault        worker
    ├── MediaError             (the upload itself)   event        `review` flag, reason = the code
    │   ├── EmptyMedia            empty_media          400
    │   ├── UnsupportedMedia      unsupported_media    415
    │   ├── CorruptMedia          corrupt_media        422
    │   ├── NoVideoStream         no_video_stream      422   (no video and no analysable audio stream)
    │   ├── UnsupportedAudio      unsupported_audio    422   (audio over the rate or channel bounds)
    │   ├── MediaTooLarge         media_too_large      413
    │   ├── ResolutionTooHigh     resolution_too_high  422
    │   ├── MediaTooLong          media_too_long       422
    │   ├── DecodeFailed          decode_failed        422   (decoder crashed or ran out of time/memory)
    │   └── MediaNotFound         media_not_found      404   event  DLQ (no such file or object)
    ├── RequestError           (the request/event)   event        DLQ at once
    │   ├── InvalidRequest        invalid_request      400
    │   ├── MalformedEvent        malformed_event      400   (worker: not JSON, or a tombstone)
    │   ├── SchemaViolation       schema_violation     400   (worker: JSON that breaks the event contract)
    │   ├── InvalidUrl            invalid_url          400   (malformed, or a scheme other than allowed)
    │   ├── UrlNotAllowed         url_not_allowed      400   (private address; s3 bucket not allowed)
    │   ├── Unauthorized          unauthorized         401
    │   ├── Forbidden             forbidden            403
    │   ├── UnsupportedContentType  unsupported_content_type  415
    │   ├── NotFound              not_found            404
    │   └── UploadTimeout         upload_timeout       408   (gateway: the body arrived too slowly)
    ├── FetchFailed               fetch_failed         422   event      DLQ at once (4xx, bad redirect, DNS)
    │   ├── SourceUnavailable     fetch_failed         422   transient  retried, then DLQ (5xx/408/429,
    │   │                                                               refused connection, broken transfer)
    │   └── ObjectAccessDenied    access_denied        403   event      DLQ at once (s3: the store refused
    │                                                                   dfguard's credentials the object)
    ├── DeadlineExceeded          deadline_exceeded    504   transient  retried, then DLQ
    ├── OverCapacity              over_capacity        429   transient  (gateway: Retry-After)
    │   └── RateLimited           rate_limited         429   transient  (gateway: the tenant's token bucket)
    ├── BackendUnavailable        backend_unavailable  503   dependency hold (inference backend)
    ├── StoreUnavailable          store_unavailable    503   dependency hold (decision store)
    ├── ObjectStoreUnavailable    object_store_unavailable  503  dependency hold (the s3 endpoint)
    └── InternalError             internal_error       500   internal   DLQ, metered and alerted

Fault kinds: `event` (the event's own fault: its documented outcome at once), `transient` (this event's source
failed in a way that may pass: bounded retries, then the DLQ), `dependency` (a shared dependency is down: the
worker holds while its health probe fails, never dead-letters; when every probe is green the failure is this
event's and gets bounded retries), `internal` (a bug: dead-lettered at once, metered and alerted).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, Literal

__all__ = [
    "ERRORS",
    "Action",
    "BackendUnavailable",
    "CorruptMedia",
    "DeadlineExceeded",
    "DecodeFailed",
    "EmptyMedia",
    "Fault",
    "FetchFailed",
    "Forbidden",
    "InternalError",
    "InvalidRequest",
    "InvalidUrl",
    "MalformedEvent",
    "MediaError",
    "MediaNotFound",
    "MediaTooLarge",
    "MediaTooLong",
    "ModerationError",
    "NoVideoStream",
    "NotFound",
    "ObjectAccessDenied",
    "ObjectStoreUnavailable",
    "Outcome",
    "OverCapacity",
    "RateLimited",
    "RequestError",
    "ResolutionTooHigh",
    "SchemaViolation",
    "SourceUnavailable",
    "StoreUnavailable",
    "Unauthorized",
    "UnsupportedAudio",
    "UnsupportedContentType",
    "UnsupportedMedia",
    "UploadTimeout",
    "UrlNotAllowed",
    "classify",
    "error_for_code",
    "outcome_of",
    "outcomes_markdown",
]

Dependency = Literal["inference", "store", "kafka", "object_store"]


class Fault(StrEnum):
    """Whose fault a failure is; decides what a retrying consumer does with it."""

    EVENT = "event"  # the event's own fault: its documented outcome, at once
    TRANSIENT = "transient"  # this event's source failed in a way that may pass: bounded retries, then DLQ
    DEPENDENCY = "dependency"  # a shared dependency is down: hold while its probe fails; never dead-letter
    INTERNAL = "internal"  # a bug: DLQ at once, metered and alerted


class Action(StrEnum):
    """What the Kafka worker does with an event that failed this way."""

    REVIEW = "review"  # a `review` flag with the code as its reason (user content a person should look at)
    DEAD_LETTER = "dead_letter"  # the DLQ at once
    RETRY = "retry"  # bounded retries (DFG_WORKER_MAX_ATTEMPTS), then the DLQ
    HOLD = "hold"  # hold while a dependency probe fails (not counted); bounded retries once all are green


class ModerationError(Exception):
    """Base of every error dfguard reports to a caller. Subclasses set the class attributes; `classify`
    reads them (never the message)."""

    code: ClassVar[str] = "internal_error"
    http_status: ClassVar[int] = 500
    fault: ClassVar[Fault] = Fault.INTERNAL
    review: ClassVar[bool] = False  # an event fault the worker decides as `review` instead of dead-lettering
    dependency: ClassVar[Dependency | None] = None  # the shared dependency of a `dependency` fault

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MediaError(ModerationError):
    """The media itself cannot be analysed: a property of the upload, not of the service."""

    fault = Fault.EVENT
    review = True


class EmptyMedia(MediaError):
    """The upload has no bytes."""

    code = "empty_media"
    http_status = 400


class UnsupportedMedia(MediaError):
    """Not a video or image container dfguard decodes."""

    code = "unsupported_media"
    http_status = 415


class CorruptMedia(MediaError):
    """The container is broken."""

    code = "corrupt_media"
    http_status = 422


class NoVideoStream(MediaError):
    """A container with neither a video stream nor an audio stream to score; audio only when audio scoring
    is off (`DFG_AUDIO_ENABLED=false`)."""

    code = "no_video_stream"
    http_status = 422


class UnsupportedAudio(MediaError):
    """An audio stream outside the decoder's bounds (sample rate, channel count): not decoded."""

    code = "unsupported_audio"
    http_status = 422


class MediaTooLarge(MediaError):
    """Over `DFG_MAX_MEDIA_BYTES`."""

    code = "media_too_large"
    http_status = 413


class ResolutionTooHigh(MediaError):
    """Frames over `DFG_MAX_FRAME_PIXELS`."""

    code = "resolution_too_high"
    http_status = 422


class MediaTooLong(MediaError):
    """Over `DFG_MAX_DURATION_SECONDS`."""

    code = "media_too_long"
    http_status = 422


class DecodeFailed(MediaError):
    """The decoder crashed or ran out of time or memory."""

    code = "decode_failed"
    http_status = 422


class MediaNotFound(MediaError):
    """No such file or object, or not a regular file; nothing a person could review, so the event is
    dead-lettered."""

    code = "media_not_found"
    http_status = 404
    review = False


class RequestError(ModerationError):
    """The request (or event) is malformed or not allowed; the media was never looked at."""

    http_status = 400
    fault = Fault.EVENT


class InvalidRequest(RequestError):
    """A malformed request (gateway)."""

    code = "invalid_request"


class MalformedEvent(RequestError):
    """An event that is not JSON, or a tombstone (worker)."""

    code = "malformed_event"


class SchemaViolation(RequestError):
    """JSON that breaks the upload event contract (worker)."""

    code = "schema_violation"


class InvalidUrl(RequestError):
    """A malformed URI, or a scheme not allowed, or a file outside `DFG_FILE_URI_ROOT`."""

    code = "invalid_url"


class UrlNotAllowed(RequestError):
    """A URI resolving to a loopback, private or metadata address, or an s3:// bucket the tenant may not
    read."""

    code = "url_not_allowed"


class Unauthorized(RequestError):
    """No or an unknown API key."""

    code = "unauthorized"
    http_status = 401


class Forbidden(RequestError):
    """The key may not do this."""

    code = "forbidden"
    http_status = 403


class UnsupportedContentType(RequestError):
    """A request body of another content type."""

    code = "unsupported_content_type"
    http_status = 415


class NotFound(RequestError):
    """No such route, job or decision."""

    code = "not_found"
    http_status = 404


class UploadTimeout(RequestError):
    """The request body arrived too slowly: past the upload deadline or under the minimum transfer rate."""

    code = "upload_timeout"
    http_status = 408


class FetchFailed(ModerationError):
    """The URL refused the fetch for good (4xx, a bad redirect, an unknown host): retrying will not help."""

    code = "fetch_failed"
    http_status = 422
    fault = Fault.EVENT


class SourceUnavailable(FetchFailed):
    """The URL's host failed in a way that may pass (5xx, 408/429, refused connection, a broken transfer)."""

    fault = Fault.TRANSIENT


class ObjectAccessDenied(FetchFailed):
    """The object store denied dfguard's credentials this object (S3 `AccessDenied`; not `forbidden`, which is
    about the caller's API key): dead-lettered at once, replayed once access is granted."""

    code = "access_denied"
    http_status = 403


class DeadlineExceeded(ModerationError):
    """Took longer than allowed (a download, or a gateway request past its deadline)."""

    code = "deadline_exceeded"
    http_status = 504
    fault = Fault.TRANSIENT


class OverCapacity(ModerationError):
    """Every worker busy and the queue full, or the tenant over its share of it (gateway; Retry-After)."""

    code = "over_capacity"
    http_status = 429
    fault = Fault.TRANSIENT

    def __init__(self, message: str, retry_after_seconds: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds  # None: the gateway estimates it from its latency


class RateLimited(OverCapacity):
    """The tenant sent more than its rate allows (gateway; Retry-After from its token bucket)."""

    code = "rate_limited"


class BackendUnavailable(ModerationError):
    """The inference backend (Triton) does not answer, or its circuit breaker is open."""

    code = "backend_unavailable"
    http_status = 503
    fault = Fault.DEPENDENCY
    dependency = "inference"


class StoreUnavailable(ModerationError):
    """The decision store (database) does not answer, or its schema is not current."""

    code = "store_unavailable"
    http_status = 503
    fault = Fault.DEPENDENCY
    dependency = "store"


class ObjectStoreUnavailable(ModerationError):
    """The S3 endpoint does not answer, or refuses dfguard's own credentials (then every object fails
    alike)."""

    code = "object_store_unavailable"
    http_status = 503
    fault = Fault.DEPENDENCY
    dependency = "object_store"


class InternalError(ModerationError):
    """Anything unexpected: a bug."""

    code = "internal_error"
    http_status = 500


# Every concrete class, in the order of the module docstring (and of docs/worker.md's table).
ERRORS: tuple[type[ModerationError], ...] = (
    EmptyMedia,
    UnsupportedMedia,
    CorruptMedia,
    NoVideoStream,
    UnsupportedAudio,
    MediaTooLarge,
    ResolutionTooHigh,
    MediaTooLong,
    DecodeFailed,
    MediaNotFound,
    InvalidRequest,
    MalformedEvent,
    SchemaViolation,
    InvalidUrl,
    UrlNotAllowed,
    Unauthorized,
    Forbidden,
    UnsupportedContentType,
    NotFound,
    UploadTimeout,
    FetchFailed,
    SourceUnavailable,
    ObjectAccessDenied,
    DeadlineExceeded,
    OverCapacity,
    RateLimited,
    BackendUnavailable,
    StoreUnavailable,
    ObjectStoreUnavailable,
    InternalError,
)

_BY_CODE: dict[str, type[ModerationError]] = {}
for _cls in ERRORS:
    _BY_CODE.setdefault(_cls.code, _cls)  # a shared code rebuilds its first (most general) class


def error_for_code(code: str, message: str) -> ModerationError:
    """Rebuild an error from its code (used when an error crosses a process boundary)."""
    return _BY_CODE.get(code, InternalError)(message)


@dataclass(frozen=True)
class Outcome:
    """What a failure means for every adapter: the gateway's status and code, the worker's action."""

    code: str
    http_status: int
    fault: Fault
    action: Action
    dependency: Dependency | None = None


def outcome_of(cls: type[ModerationError]) -> Outcome:
    """The outcome of an error class (pure: the class attributes alone decide it)."""
    action = {
        Fault.EVENT: Action.REVIEW if cls.review else Action.DEAD_LETTER,
        Fault.TRANSIENT: Action.RETRY,
        Fault.DEPENDENCY: Action.HOLD,
        Fault.INTERNAL: Action.DEAD_LETTER,
    }[cls.fault]
    return Outcome(cls.code, cls.http_status, cls.fault, action, cls.dependency)


def classify(exc: BaseException) -> Outcome:
    """The outcome of any exception: a `ModerationError` by its class, anything else is an internal error."""
    return outcome_of(type(exc) if isinstance(exc, ModerationError) else InternalError)


_WORKER = {
    Action.REVIEW: "`review` flag, reason = the code",
    Action.DEAD_LETTER: "DLQ at once",
    Action.RETRY: "retried (`DFG_WORKER_MAX_ATTEMPTS`), then DLQ",
    Action.HOLD: "hold while the {dependency} probe fails; all probes green: retried, then DLQ",
}


def outcomes_markdown() -> str:
    """docs/worker.md's error outcomes table, generated from the classes (a test keeps the doc equal)."""
    rows = [
        "| error | when | code | HTTP | fault | worker |",
        "|---|---|---|---|---|---|",
    ]
    for cls in ERRORS:
        o = outcome_of(cls)
        when = " ".join((cls.__doc__ or "").split()).split(": ")[0].rstrip(".")
        worker = _WORKER[o.action].format(dependency=o.dependency)
        if o.fault is Fault.INTERNAL:
            worker += " (metered, alerted)"
        rows.append(f"| `{cls.__name__}` | {when} | `{o.code}` | {o.http_status} | {o.fault} | {worker} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # python -m service.errors: print the table for docs/worker.md
    print(outcomes_markdown(), end="")
