"""Test data for the decision store: a `NewDecision` with a valid flag event, varied by keyword."""

from __future__ import annotations

from datetime import UTC, datetime

from service.events import FlagEvent, FlagTimings
from service.schemas import ModelRef, UsedThresholds
from service.store import NewDecision

__all__ = ["new_decision"]


def new_decision(
    video_id: str,
    *,
    tenant: str = "acme",
    decision: str = "allow",
    sha: str | None = "ab" * 32,
    hashes: tuple[int, ...] = (),
    origin: str = "scored",
    event: str = "ev-1",
) -> NewDecision:
    flag = FlagEvent(
        event_id=f"flag-{tenant}-{video_id}",
        video_id=video_id,
        tenant=tenant,
        decision=decision,
        score=0.9 if decision == "flag" else 0.1,
        reasons=["untrained_model"],
        model=ModelRef(name="m", version="1"),
        top_frames=[],
        timings_ms=FlagTimings(fetch=1.0, total=5.0),
        decided_at=datetime(2026, 11, 27, tzinfo=UTC),
        source_event_id=event,
    )
    return NewDecision(
        tenant=tenant,
        origin=origin,  # type: ignore[arg-type]
        thresholds=UsedThresholds(review=0.5, flag=0.8),
        aggregation="confident",
        sha256=sha,
        flag=flag,
        frame_hashes=hashes,
    )
