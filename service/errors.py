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
    └── InternalError             internal_error       500

Adapters map these once (CLI exit codes, HTTP statuses, DLQ reasons); the core only raises them.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "CorruptMedia",
    "DecodeFailed",
    "EmptyMedia",
    "InternalError",
    "MediaError",
    "MediaNotFound",
    "MediaTooLarge",
    "MediaTooLong",
    "ModerationError",
    "NoVideoStream",
    "ResolutionTooHigh",
    "UnsupportedMedia",
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
        InternalError,
    )
}


def error_for_code(code: str, message: str) -> ModerationError:
    """Rebuild an error from its code (used when an error crosses a process boundary)."""
    return _BY_CODE.get(code, InternalError)(message)
