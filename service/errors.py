"""Error taxonomy: every failure the service reports has a stable code, an HTTP status and a retry policy.

    ModerationError
    ├── MediaError                (user content that cannot be analysed; never retried)
    │   ├── EmptyMedia            empty_media          400
    │   ├── UnsupportedMedia      unsupported_media    415
    │   ├── CorruptMedia          corrupt_media        422
    │   ├── NoVideoStream         no_video_stream      422
    │   ├── MediaTooLarge         media_too_large      413
    │   ├── ResolutionTooHigh     resolution_too_high  422
    │   ├── MediaTooLong          media_too_long       422
    │   ├── DecodeFailed          decode_failed        422   (decoder crashed or ran out of time/memory)
    │   └── MediaNotFound         media_not_found      404   (no such file, or not a regular file)
    ├── RequestError              (the request itself is wrong)
    │   ├── InvalidRequest        invalid_request      400
    │   ├── InvalidUrl            invalid_url          400   (malformed, or a scheme other than allowed)
    │   ├── UrlNotAllowed         url_not_allowed      400   (resolves to a loopback/private/metadata address)
    │   ├── Unauthorized          unauthorized         401
    │   ├── Forbidden             forbidden            403
    │   ├── UnsupportedContentType  unsupported_content_type  415
    │   └── NotFound              not_found            404
    ├── FetchFailed               fetch_failed         422   (URL not fetchable: refused, 4xx/5xx, DNS)
    ├── OverCapacity              over_capacity        429   (retryable; Retry-After)
    ├── BackendUnavailable        backend_unavailable  503   (retryable; Retry-After)
    ├── StoreUnavailable          store_unavailable    503   (retryable; Retry-After: the decision store)
    ├── DeadlineExceeded          deadline_exceeded    504   (retryable)
    └── InternalError             internal_error       500

Adapters map these once (CLI exit codes, HTTP statuses, DLQ reasons); the core only raises them.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "BackendUnavailable",
    "CorruptMedia",
    "DeadlineExceeded",
    "DecodeFailed",
    "EmptyMedia",
    "FetchFailed",
    "Forbidden",
    "InternalError",
    "InvalidRequest",
    "InvalidUrl",
    "MediaError",
    "MediaNotFound",
    "MediaTooLarge",
    "MediaTooLong",
    "ModerationError",
    "NoVideoStream",
    "NotFound",
    "OverCapacity",
    "RequestError",
    "ResolutionTooHigh",
    "StoreUnavailable",
    "Unauthorized",
    "UnsupportedContentType",
    "UnsupportedMedia",
    "UrlNotAllowed",
    "error_for_code",
]


class ModerationError(Exception):
    """Base of every error dfguard reports to a caller."""

    code: ClassVar[str] = "internal_error"
    http_status: ClassVar[int] = 500
    retryable: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MediaError(ModerationError):
    """The media itself cannot be analysed: a property of the upload, not of the service."""


class EmptyMedia(MediaError):
    code = "empty_media"
    http_status = 400


class UnsupportedMedia(MediaError):
    code = "unsupported_media"
    http_status = 415


class CorruptMedia(MediaError):
    code = "corrupt_media"
    http_status = 422


class NoVideoStream(MediaError):
    code = "no_video_stream"
    http_status = 422


class MediaTooLarge(MediaError):
    code = "media_too_large"
    http_status = 413


class ResolutionTooHigh(MediaError):
    code = "resolution_too_high"
    http_status = 422


class MediaTooLong(MediaError):
    code = "media_too_long"
    http_status = 422


class DecodeFailed(MediaError):
    code = "decode_failed"
    http_status = 422


class MediaNotFound(MediaError):
    code = "media_not_found"
    http_status = 404


class RequestError(ModerationError):
    """The request is malformed or not allowed; the media was never looked at."""

    http_status = 400


class InvalidRequest(RequestError):
    code = "invalid_request"


class InvalidUrl(RequestError):
    code = "invalid_url"


class UrlNotAllowed(RequestError):
    code = "url_not_allowed"


class Unauthorized(RequestError):
    code = "unauthorized"
    http_status = 401


class Forbidden(RequestError):
    code = "forbidden"
    http_status = 403


class UnsupportedContentType(RequestError):
    code = "unsupported_content_type"
    http_status = 415


class NotFound(RequestError):
    code = "not_found"
    http_status = 404


class FetchFailed(ModerationError):
    """The URL could not be fetched. `transient` (connection refused, 5xx, 408/429, a broken transfer) tells a
    retrying consumer such as the Kafka worker that trying again later may succeed; a 4xx will not."""

    code = "fetch_failed"
    http_status = 422

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class OverCapacity(ModerationError):
    code = "over_capacity"
    http_status = 429
    retryable = True


class BackendUnavailable(ModerationError):
    code = "backend_unavailable"
    http_status = 503
    retryable = True


class StoreUnavailable(ModerationError):
    """The decision store cannot be reached (or its schema is not current); the request may be retried."""

    code = "store_unavailable"
    http_status = 503
    retryable = True


class DeadlineExceeded(ModerationError):
    code = "deadline_exceeded"
    http_status = 504
    retryable = True


class InternalError(ModerationError):
    code = "internal_error"
    http_status = 500


_BY_CODE: dict[str, type[ModerationError]] = {
    cls.code: cls
    for cls in (
        EmptyMedia,
        UnsupportedMedia,
        CorruptMedia,
        NoVideoStream,
        MediaTooLarge,
        ResolutionTooHigh,
        MediaTooLong,
        DecodeFailed,
        MediaNotFound,
        InvalidRequest,
        InvalidUrl,
        UrlNotAllowed,
        Unauthorized,
        Forbidden,
        NotFound,
        UnsupportedContentType,
        FetchFailed,
        OverCapacity,
        BackendUnavailable,
        StoreUnavailable,
        DeadlineExceeded,
        InternalError,
    )
}


def error_for_code(code: str, message: str) -> ModerationError:
    """Rebuild an error from its code (used when an error crosses a process boundary)."""
    return _BY_CODE.get(code, InternalError)(message)
