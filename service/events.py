"""Kafka event contracts (JSON, versioned): `videos.uploaded` in, `moderation.flags` out.

Records are keyed by `video_id` (per-video ordering); headers carry `schema_version` and `trace_id`. The JSON
Schemas in `docs/schemas/` are generated from these models (`dfguard schemas docs/schemas`) and a test keeps
them in step, so producers in other languages validate against exactly what the worker accepts.

`moderation.flags` has two schema versions. v1 is closed (`additionalProperties: false`), so nothing could be
added to it; v2 is a superset that allows unknown fields (consumers must ignore them) and adds `revision` and
`supersedes` (re-decisions by `dfguard rescore`). The worker emits v2 unless `DFG_FLAGS_SCHEMA_VERSION=1`; the
`schema_version` header always names the version of the bytes it accompanies.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from service.schemas import AudioSummary, Decision, ModelRef

__all__ = [
    "SCHEMA_VERSION",
    "FlagAudio",
    "FlagEvent",
    "FlagEventV1",
    "FlagFace",
    "FlagFrame",
    "FlagTimings",
    "FlagsSchemaVersion",
    "RevisionNotExpressible",
    "UploadEvent",
    "encode_flag_event",
    "flag_event_id",
    "parse_flag_event",
    "schema_version_of",
    "write_json_schemas",
]

SCHEMA_VERSION: Literal[2] = 2  # of `moderation.flags` by default (`DFG_FLAGS_SCHEMA_VERSION`)
_ID = r"^[A-Za-z0-9][A-Za-z0-9._:@/+=-]*$"
_FLAG_NAMESPACE = uuid.UUID("6c1f3e0e-5d0a-4f43-9a51-6466677561a1")


def flag_event_id(tenant: str, video_id: str, revision: int = 1) -> str:
    """Stable per video and revision: every emission of one revision carries the same id.

    Revision 1 keeps the id flag events always had (uuid5 of `tenant/video_id`); revision n >= 2 hashes
    `tenant/video_id#n`, so a re-score that crashed and re-creates a revision gives it the same id.
    """
    name = f"{tenant}/{video_id}" if revision == 1 else f"{tenant}/{video_id}#{revision}"
    return str(uuid.uuid5(_FLAG_NAMESPACE, name))


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


FlagAudio = AudioSummary  # the flag event's `audio` block (schema v2 only)


# v1 is kept byte for byte (docstring and title included: they are its JSON Schema's description and title)
# for consumers that validate against `moderation.flags.v1.schema.json`, whose `additionalProperties: false`
# is why v2's fields could not be added to it. Emitted where `DFG_FLAGS_SCHEMA_VERSION=1`; never a revision.
class FlagEventV1(BaseModel):
    """A moderation decision (topic `moderation.flags`, key = video_id).

    Emitted once per video; a redelivered upload event re-emits the stored event byte for byte, so consumers
    may see a duplicate but never a different decision for one video.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=(), title="FlagEvent")

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


class FlagEvent(BaseModel):
    """A moderation decision (topic `moderation.flags`, key = video_id), schema version 2.

    A superset of v1: `revision` and `supersedes` added, and unknown fields allowed (and ignored), so later
    fields join v2 additively. `dfguard rescore` may re-decide a video: each changed decision is a new
    revision with its own stable `event_id`, superseding the previous one. Consumers keep the highest
    revision per (tenant, video_id); a redelivered upload re-emits the latest stored revision byte for byte.
    """

    model_config = ConfigDict(extra="ignore", frozen=True, protected_namespaces=())

    schema_version: Literal[2] = 2
    event_id: str = Field(
        description="Stable per revision: a re-emission carries the same id (revision 1: per video)."
    )
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
    revision: int = Field(
        1, ge=1, description="1 for the first decision; 2, 3, ... for re-decisions. Keep the highest."
    )
    supersedes: str | None = Field(
        None, description="event_id of the revision this one replaces; null for revision 1."
    )
    evidence_url: str | None = Field(
        None,
        description="Signed, expiring link to the decision's evidence page (frames, faces, where the model "
        "looked, score over time); null when no evidence was kept or links are not configured. Valid until "
        "the evidence is deleted (DFG_EVIDENCE_RETENTION_SECONDS).",
    )
    audio: FlagAudio | None = Field(
        None,
        description="The speech track's verdict (`decision` is the stricter of the faces' and this one's); "
        "null when the media has no audio track or audio scoring is off.",
    )


FlagsSchemaVersion = Literal[1, 2]
_FLAG_MODELS: dict[int, type[BaseModel]] = {1: FlagEventV1, 2: FlagEvent}


class RevisionNotExpressible(ValueError):
    """A revision > 1 cannot be written as schema version 1 (which has no `revision` field)."""


def parse_flag_event(raw: bytes | str) -> FlagEvent:
    """Read a flag event of either schema version (v1 reads as revision 1).

    v2 is read as its JSON Schema allows: unknown fields are ignored at every level (a later v2 may add
    `timings_ms.queue` or `model.digest`), not only at the top, where the nested models themselves stay
    closed for v1 (whose schema is generated from them)."""
    data = json.loads(raw)
    if isinstance(data, dict) and data.get("schema_version") == 1:
        v1 = FlagEventV1.model_validate(data)
        return FlagEvent.model_validate({**v1.model_dump(), "schema_version": 2})
    return FlagEvent.model_validate(_known(FlagEvent, data))


def _known(model: type[BaseModel], data: Any) -> Any:
    """`data` with only the fields `model` (and its nested models) declare; anything else is left as is for
    validation to judge."""
    if not isinstance(data, dict):
        return data
    out = {}
    for name, value in data.items():
        field = model.model_fields.get(name)
        if field is None:
            continue
        out[name] = _known_value(field.annotation, value)
    return out


def _known_value(annotation: Any, value: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _known(annotation, value)
    args = get_args(annotation)
    if get_origin(annotation) is list and args and isinstance(value, list):
        return [_known_value(args[0], v) for v in value]
    models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
    if len(models) == 1 and isinstance(value, dict):  # `Model | None`
        return _known(models[0], value)
    return value


def encode_flag_event(event: FlagEvent, version: FlagsSchemaVersion = SCHEMA_VERSION) -> bytes:
    """The bytes produced to `moderation.flags` (and stored, so a re-emission is byte for byte) in `version`.

    Raises:
        RevisionNotExpressible: `event` is a revision > 1 and `version` is 1.
    """
    if version == 2:
        return event.model_dump_json().encode()
    if event.revision != 1 or event.supersedes is not None:
        raise RevisionNotExpressible(
            f"flag event {event.event_id} is revision {event.revision}: schema version 1 cannot carry "
            "revisions (set DFG_FLAGS_SCHEMA_VERSION=2)"
        )
    fields = event.model_dump(exclude={"schema_version", "revision", "supersedes", "evidence_url", "audio"})
    return FlagEventV1.model_validate({**fields, "schema_version": 1}).model_dump_json().encode()


def schema_version_of(raw: bytes | str) -> int:
    """The `schema_version` of encoded flag-event bytes (the Kafka header must name what the bytes are)."""
    version = json.loads(raw).get("schema_version")
    if version not in _FLAG_MODELS:
        raise ValueError(f"not a flag event of a known schema version: {version!r}")
    return int(version)


def _open(schema: Any) -> Any:
    """Drop `additionalProperties: false` at every level: v2 consumers ignore unknown fields anywhere."""
    if isinstance(schema, dict):
        return {k: _open(v) for k, v in schema.items() if not (k == "additionalProperties" and v is False)}
    if isinstance(schema, list):
        return [_open(v) for v in schema]
    return schema


def write_json_schemas(directory: Path) -> list[Path]:
    """Write the JSON Schema of each event contract and version into `directory`; returns the files written.

    v1 of `moderation.flags` is closed (`additionalProperties: false`, as it always was); v2 is open at every
    level, so fields can be added to v2 without breaking a consumer that validates.
    """
    directory.mkdir(parents=True, exist_ok=True)
    contracts: list[tuple[str, type[BaseModel], int]] = [
        ("videos.uploaded", UploadEvent, 1),
        ("moderation.flags", FlagEventV1, 1),
        ("moderation.flags", FlagEvent, 2),
    ]
    out = []
    for name, model, version in contracts:
        schema: dict[str, Any] = model.model_json_schema(mode="validation")
        if model is FlagEvent:
            schema = _open(schema)
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"{name}.v{version}",
            **schema,
        }
        path = directory / f"{name}.v{version}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        out.append(path)
    return out
