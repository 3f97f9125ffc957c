"""The `moderation.flags` contract: v1 kept closed, v2 a superset open to added fields, either read back."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from service.events import (
    FlagEvent,
    FlagFace,
    FlagFrame,
    FlagTimings,
    RevisionNotExpressible,
    encode_flag_event,
    flag_event_id,
    parse_flag_event,
    schema_version_of,
)
from service.schemas import ModelRef

SCHEMAS = Path(__file__).resolve().parent.parent / "docs" / "schemas"


def _validator(version: int) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / f"moderation.flags.v{version}.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def _event(**kw: Any) -> FlagEvent:
    base: dict[str, Any] = {
        "event_id": flag_event_id("acme", "v"),
        "video_id": "v",
        "tenant": "acme",
        "decision": "flag",
        "score": 0.93,
        "reasons": ["score_at_or_above_flag_threshold"],
        "model": ModelRef(name="dfguard-default", version="1"),
        "top_frames": [],
        "timings_ms": FlagTimings(fetch=1.0, total=2.0),
        "decided_at": datetime(2026, 12, 1, tzinfo=UTC),
        "source_event_id": "ev-1",
    }
    return FlagEvent(**{**base, **kw})


def test_v1_bytes_validate_against_the_closed_v1_schema_and_read_back_as_revision_1() -> None:
    raw = encode_flag_event(_event(), 1)
    doc = json.loads(raw)
    _validator(1).validate(doc)
    assert doc["schema_version"] == 1 and "revision" not in doc and "supersedes" not in doc
    assert schema_version_of(raw) == 1
    assert parse_flag_event(raw) == _event(), "v1 reads as the same decision, revision 1"
    with pytest.raises(jsonschema.ValidationError):
        _validator(1).validate({**doc, "revision": 1})  # why v2 had to be a new version


def test_v2_is_open_to_added_fields_at_every_level_and_the_reader_ignores_them() -> None:
    revision = _event(
        event_id=flag_event_id("acme", "v", 2), revision=2, supersedes=flag_event_id("acme", "v")
    )
    raw = encode_flag_event(revision, 2)
    doc = json.loads(raw)
    _validator(2).validate(doc)
    added = {**doc, "appeal_url": "https://example.com", "timings_ms": {**doc["timings_ms"], "queue": 3.0}}
    _validator(2).validate(added)
    assert parse_flag_event(json.dumps({**doc, "appeal_url": "x"})) == revision
    assert schema_version_of(raw) == 2
    with pytest.raises(RevisionNotExpressible, match="DFG_FLAGS_SCHEMA_VERSION=2"):
        encode_flag_event(revision, 1)


def test_the_v2_reader_ignores_fields_added_inside_nested_objects_and_v1_stays_closed() -> None:
    frame = FlagFrame(index=3, time_s=0.1, score=0.9, faces=[FlagFace(box=(1.0, 2.0, 3.0, 4.0), score=0.9)])
    revision = _event(top_frames=[frame])
    doc = json.loads(encode_flag_event(revision, 2))
    doc["timings_ms"]["queue"] = 3.0
    doc["model"]["digest"] = "sha256:ab"
    doc["top_frames"][0]["faces"][0]["landmarks"] = [[1, 2]]
    doc["top_frames"][0]["blur"] = 0.2
    _validator(2).validate(doc)
    assert parse_flag_event(json.dumps(doc)) == revision
    bad = json.loads(encode_flag_event(revision, 2))
    bad["timings_ms"]["total"] = "slow"
    with pytest.raises(ValidationError):
        parse_flag_event(json.dumps(bad))  # known fields are still validated
    v1 = json.loads(encode_flag_event(revision, 1))
    v1["model"]["digest"] = "sha256:ab"
    with pytest.raises(ValidationError):
        parse_flag_event(json.dumps(v1))  # v1 stays closed, as its schema says
    with pytest.raises(jsonschema.ValidationError):
        _validator(1).validate(v1)


def test_revision_ids_are_stable_and_revision_1_keeps_the_id_it_always_had() -> None:
    # Pinned: the ids consumers already hold (revision 1) and the ones a rerun must re-create (revision 2).
    assert (
        flag_event_id("acme", "v") == flag_event_id("acme", "v", 1) == "fce918d1-1c21-5e74-9936-cda4a05d23cc"
    )
    assert flag_event_id("acme", "v", 2) == "017964e3-e73e-5630-9da0-2d348ffd63b8"
    assert len({flag_event_id("acme", "v", n) for n in range(1, 5)}) == 4
    assert flag_event_id("globex", "v", 2) != flag_event_id("acme", "v", 2)
