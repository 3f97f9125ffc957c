"""The overlay lane: occlusion-sensitivity maps of kept faces, computed after the decision, out of its way.

One daemon thread at the lowest CPU priority with a bounded queue and its own backend (embedded ONNX Runtime
on one thread, or the same ensemble on Triton through its own client), never the micro-batcher: live crops
never wait behind the grid^2 occluded copies of a kept face. The decision and its flag event are out before
work reaches the lane; the page shows "being computed" until the sink stores the overlays. A full queue skips
the overlays (counted; the page says so) rather than queueing without bound. Nothing here does I/O of its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from service import metrics
from service.evidence.document import OverlayState, SensitivityMap
from service.evidence.occlusion import occlusion_drops, overlay_jpeg
from service.evidence.pictures import CropRef
from service.inference import InferenceBackend
from service.lanes import LowPriorityLane

__all__ = ["OverlayLane", "OverlaySink", "OverlayWork"]

log = logging.getLogger("dfguard.evidence")

OUTCOMES = ("ready", "failed", "queue_full", "over_quota", "gone", "shutdown")


@dataclass(frozen=True)
class OverlayWork:
    evidence_id: int
    crops_by_model: dict[str, npt.NDArray[np.uint8]]
    crop_refs: list[CropRef]


OverlaySink = Callable[[int, OverlayState, list[SensitivityMap], list[bytes]], OverlayState | None]
"""Stores a capture's overlays: (evidence id, state, maps, overlay JPEGs) -> the state stored (`skipped`: over
the tenant's quota), or None: the evidence is gone."""


class OverlayLane:
    """Scores `OverlayWork` on its own low-priority thread; `offer` never blocks. The lane owns `backend` and
    closes it."""

    def __init__(
        self,
        backend: InferenceBackend,
        sink: OverlaySink,
        *,
        grid: int,
        quality: int = 85,
        maxsize: int = 8,
    ) -> None:
        self.backend = backend
        self.sink = sink
        self.grid = grid
        self.quality = quality
        self._lane: LowPriorityLane[OverlayWork] = LowPriorityLane(
            "dfguard-overlays",
            self._compute,
            maxsize=maxsize,
            depth=metrics.EVIDENCE_QUEUE_DEPTH,
            dropped=self._dropped,
        )
        for outcome in OUTCOMES:
            metrics.EVIDENCE_OVERLAYS.labels(outcome=outcome)

    def offer(self, work: OverlayWork) -> bool:
        """Queue `work` if there is room; False (counted, and the caller marks the page) when skipped."""
        put = self._lane.put(work)
        if put != "queued":
            metrics.EVIDENCE_OVERLAYS.labels(
                outcome="queue_full" if put == "queue_full" else "shutdown"
            ).inc()
        return put == "queued"

    def maps(self, work: OverlayWork) -> tuple[list[SensitivityMap], list[bytes]]:
        """The sensitivity maps and overlay pictures of one capture's kept faces (on the caller's thread)."""
        base, drops = occlusion_drops(self.backend, work.crops_by_model, self.grid)
        shown = work.crops_by_model[self.backend.models[0].name]
        maps = [
            SensitivityMap(
                frame=ref.frame,
                face=ref.face,
                track_id=ref.track_id,
                score=round(float(base[i]), 6),
                grid=self.grid,
                drop=[[round(float(v), 5) for v in row] for row in drops[i]],
            )
            for i, ref in enumerate(work.crop_refs)
        ]
        return maps, [overlay_jpeg(shown[i], drops[i], quality=self.quality) for i in range(len(maps))]

    def _compute(self, work: OverlayWork) -> None:
        started = time.perf_counter()
        try:
            maps, pictures = self.maps(work)
            state: OverlayState = "ready"
        except Exception as exc:  # noqa: BLE001 - the lane must never take the service down
            log.warning("sensitivity maps failed", extra={"error": f"{type(exc).__name__}: {exc}"})
            maps, pictures, state = [], [], "failed"
        try:
            stored = self.sink(work.evidence_id, state, maps, pictures)
        except Exception as exc:  # noqa: BLE001 - a store that is down loses the overlays, nothing else
            log.warning("overlays not stored", extra={"error": f"{type(exc).__name__}: {exc}"})
            metrics.EVIDENCE_OVERLAYS.labels(outcome="failed").inc()
            return
        metrics.EVIDENCE_OVERLAY_SECONDS.observe(time.perf_counter() - started)
        if stored is None:
            outcome = "gone"
        elif state == "ready" and stored == "skipped":
            outcome = "over_quota"
        else:
            outcome = state
        metrics.EVIDENCE_OVERLAYS.labels(outcome=outcome).inc()

    def _dropped(self, work: OverlayWork) -> None:
        """Still queued when the lane closed: its page says `skipped` rather than "computing" forever."""
        metrics.EVIDENCE_OVERLAYS.labels(outcome="shutdown").inc()
        try:
            self.sink(work.evidence_id, "skipped", [], [])
        except Exception as exc:  # noqa: BLE001 - shutting down: the page keeps saying "computing"
            log.warning("overlay state not stored", extra={"error": f"{type(exc).__name__}: {exc}"})

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking work, finish what is queued within `timeout` seconds (the rest is dropped and marked
        skipped), release the backend."""
        if self._lane.close(timeout):
            self.backend.close()
