"""Kafka event contracts (JSON, versioned): `videos.uploaded` in, `moderation.flags` out.

Records are keyed by `video_id` (per-video ordering); headers carry `schema_version` and `trace_id`. The JSON
Schemas in `docs/schemas/` are generated from these models (`dfguard schemas docs/schemas`) and a test keeps
them in step, so producers in other languages validate against exactly what the worker accepts.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from service.schemas import Decision, ModelRef

__all__ = [
    "SCHEMA_VERSION",
    "FlagEvent",
    "FlagFace",
    "FlagFrame",
    "FlagTimings",
    "UploadEvent",
    "write_json_schemas",
]

SCHEMA_VERSION = 1
_ID = r"^[A-Za-z0-9][A-Za-z0-9._:@/+=-]*$"


class UploadEvent(BaseModel):
    """An upload the platform wants moderated (topic `videos.uploaded`, key = video_id)."""

    model_config = ConfigDict(extra="ignore", frozen=True)  # producers may add fields in a compatible v1

    schema_version: Literal[1]
    event_id: str = Field(min_length=1, max_length=128, pattern=_ID, description="Unique per event (dedup).")
    video_id: str = Field(
        min_length=1, max_length=256, pattern=_ID, description="The platform's id; the key."
    )
    tenant: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    uri: str = Field(
        min_length=1,
        max_length=4096,
        description="Where the media is: http(s):// (SSRF-checked), file:// (under DFG_FILE_URI_ROOT), "
        "s3://bucket/key (where DFG_S3_ENABLED, from a bucket of the tenant's in DFG_S3_BUCKETS).",
    )
    content_type: str | None = Field(None, max_length=255, description="Advisory only: content is sniffed.")
    uploaded_at: AwareDatetime = Field(
        description="When the platform received the upload (RFC 3339, with zone)."
    )
    priority: Literal["low", "normal", "high"] | None = None


class FlagFace(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    box: tuple[float, float, float, float] = Field(description="x1, y1, x2, y2 in upright full-frame pixels.")
    score: float


class FlagFrame(BaseModel):
    """One of the frames that drove the decision (highest face scores first)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: int
    time_s: float
    score: float = Field(description="Highest face score on this frame.")
    faces: list[FlagFace]


class FlagTimings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    fetch: float = Field(description="Milliseconds spent fetching the media.")
    decode: float = 0.0
    detect: float = 0.0
    classify: float = 0.0
    total: float = Field(description="Milliseconds from taking the event to the decision.")


class FlagEvent(BaseModel):
    """A moderation decision (topic `moderation.flags`, key = video_id).

    Emitted once per video; a redelivered upload event re-emits the stored event byte for byte, so consumers
    may see a duplicate but never a different decision for one video.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    schema_version: Literal[1] = 1
    event_id: str = Field(description="Stable for the video: a re-emission carries the same id.")
    video_id: str
    tenant: str
    decision: Decision
    score: float | None = Field(description="Video-level manipulation score; null when no face was scored.")
    reasons: list[str] = Field(
        description="Why: e.g. `no_face`, a media error code, `duplicate_of:<video_id>`, "
        "`near_duplicate_of_flagged:<video_id>`."
    )
    model: ModelRef
    top_frames: list[FlagFrame]
    timings_ms: FlagTimings
    decided_at: datetime
    source_event_id: str = Field(description="event_id of the upload event that produced this decision.")


def write_json_schemas(directory: Path) -> list[Path]:
    """Write the JSON Schema of each event contract into `directory`; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, model in (("videos.uploaded", UploadEvent), ("moderation.flags", FlagEvent)):
        schema: dict[str, Any] = model.model_json_schema(mode="validation")
        schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": f"{name}.v1", **schema}
        path = directory / f"{name}.v{SCHEMA_VERSION}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        out.append(path)
    return out
