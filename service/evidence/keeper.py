"""Keeping evidence: store a capture, hand its faces to the overlay lane, sign its link, purge.

The one adapter the worker and the gateway share between a pipeline's `CapturedEvidence` and the decision
store (`service/store/evidence.py`). Storing is synchronous: the worker stores the capture before the decision
(a flag event links only evidence that was stored) and hands the faces to the overlay lane once the flag event
is acknowledged (`follow_up`); a job's overlays follow at once. A capture that cannot be stored is counted and
dropped: evidence never costs an upload its verdict.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from service import metrics
from service.config import Settings
from service.evidence.capture import CapturedEvidence, document_for
from service.evidence.document import AuditEntry, EvidenceSubject, OverlayState, SensitivityMap
from service.evidence.lane import OverlayLane, OverlayWork
from service.evidence.links import LinkGrant, signed_url
from service.schemas import ScoreResult
from service.store import DecisionStore, brief_error

__all__ = ["EvidenceKeeper", "Kept"]

log = logging.getLogger("dfguard.evidence")


@dataclass(frozen=True)
class Kept:
    """A stored capture, and its overlay work when overlays are planned (handed to the lane later)."""

    evidence_id: int
    overlays: OverlayWork | None


CAPTURE_OUTCOMES = ("stored", "over_quota", "store_unavailable")
PURGE_REASONS = ("expired", "quota", "erased")


class EvidenceKeeper:
    """Thread-safe. `store` is a callable returning the open store (a `LazyStore.get`, or a store's own)."""

    def __init__(
        self,
        settings: Settings,
        store: Callable[[], DecisionStore],
        lane: OverlayLane | None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.store = store
        self.lane = lane
        self.clock = clock
        self._stop = threading.Event()
        self._purger: threading.Thread | None = None
        self._reported: set[str] = set()  # tenants this process set a stored-bytes gauge for
        for outcome in CAPTURE_OUTCOMES:
            metrics.EVIDENCE_CAPTURES.labels(outcome=outcome)
        for reason in PURGE_REASONS:
            metrics.EVIDENCE_PURGED.labels(reason=reason)

    # --- links -------------------------------------------------------------------------------------------

    def expiry(self, captured_at: datetime) -> datetime:
        return captured_at + timedelta(seconds=self.settings.evidence_retention_seconds)

    @property
    def links(self) -> bool:
        """Whether links are signed (`DFG_EVIDENCE_LINK_SECRET` set)."""
        return bool(self.settings.evidence_link_secret)

    def link(
        self, subject: EvidenceSubject, subject_id: str, tenant: str, captured_at: datetime
    ) -> str | None:
        """The signed page link of evidence captured at `captured_at`, valid as long as it is kept; None
        without a link secret."""
        return self.link_until(subject, subject_id, tenant, self.expiry(captured_at))

    def link_until(
        self, subject: EvidenceSubject, subject_id: str, tenant: str, expires_at: datetime
    ) -> str | None:
        """The signed page link, valid until `expires_at`; None without a link secret."""
        secret = self.settings.evidence_link_secret
        if not secret:
            return None
        expires = int(expires_at.timestamp())
        return signed_url(self.settings.public_url, secret, LinkGrant(subject, subject_id, tenant, expires))

    # --- storing -----------------------------------------------------------------------------------------

    def save(
        self,
        captured: CapturedEvidence,
        result: ScoreResult,
        *,
        subject: EvidenceSubject,
        subject_id: str,
        tenant: str,
        captured_at: datetime | None = None,
        audit: Sequence[AuditEntry] = (),
    ) -> Kept | None:
        """Store the capture (its overlays `pending` when they are planned); None when it was not kept (the
        store is down, or the capture alone is larger than the tenant's quota: counted, never raised)."""
        now = captured_at or self.clock()
        grid = self.settings.evidence_occlusion_grid
        document = document_for(
            captured,
            result,
            subject=subject,
            subject_id=subject_id,
            tenant=tenant,
            now=now,
            retention_seconds=self.settings.evidence_retention_seconds,
            overlays_planned=self.lane is not None and grid > 0,
            audit=audit,
        )
        try:
            evidence_id = self.store().put_evidence(
                document, captured.pictures, quota_bytes=self.settings.evidence_tenant_quota_bytes, now=now
            )
        except Exception as exc:  # noqa: BLE001 - no evidence is better than no verdict
            log.warning("evidence not stored", extra={"error": brief_error(exc), "media_id": subject_id})
            metrics.EVIDENCE_CAPTURES.labels(outcome="store_unavailable").inc()
            return None
        if evidence_id is None:
            metrics.EVIDENCE_CAPTURES.labels(outcome="over_quota").inc()
            return None
        metrics.EVIDENCE_CAPTURES.labels(outcome="stored").inc()
        work = None
        if document.overlays == "pending":
            work = OverlayWork(evidence_id, captured.crops_by_model, captured.crop_refs)
        return Kept(evidence_id, work)

    def follow_up(self, kept: Kept, go: bool = True) -> None:
        """Hand a stored capture's faces to the overlay lane (`go`), or mark its overlays skipped (the
        decision's flag event was not produced: stopping). Never blocks."""
        if kept.overlays is None:
            return
        if not go:
            metrics.EVIDENCE_OVERLAYS.labels(outcome="shutdown").inc()
        if not go or self.lane is None or not self.lane.offer(kept.overlays):
            self.store_overlays(kept.evidence_id, "skipped", [], [])

    def keep(
        self,
        captured: CapturedEvidence,
        result: ScoreResult,
        *,
        subject: EvidenceSubject,
        subject_id: str,
        tenant: str,
        captured_at: datetime | None = None,
        audit: Sequence[AuditEntry] = (),
    ) -> int | None:
        """`save`, then `follow_up` at once (a job: its answer is made); the evidence id, or None."""
        kept = self.save(
            captured,
            result,
            subject=subject,
            subject_id=subject_id,
            tenant=tenant,
            captured_at=captured_at,
            audit=audit,
        )
        if kept is None:
            return None
        self.follow_up(kept)
        return kept.evidence_id

    def store_overlays(
        self, evidence_id: int, state: OverlayState, maps: list[SensitivityMap], pictures: list[bytes]
    ) -> OverlayState | None:
        """The overlay lane's sink (also marks skipped overlays): the state stored (`skipped` when the
        overlays are over the tenant's quota), or None when the evidence is gone."""
        try:
            return self.store().set_evidence_overlays(
                evidence_id,
                state,
                maps,
                pictures,
                now=self.clock(),
                quota_bytes=self.settings.evidence_tenant_quota_bytes,
            )
        except Exception as exc:  # the page keeps saying "pending"; counted by the lane
            log.warning("overlay state not stored", extra={"error": brief_error(exc)})
            if state == "skipped":
                return None
            raise

    # --- retention ---------------------------------------------------------------------------------------

    def purge(self) -> int:
        """Delete expired evidence and refresh the stored-bytes gauge; the count deleted."""
        store = self.store()
        count = store.purge_evidence(now=self.clock())
        stored = store.evidence_bytes()
        for tenant in self._reported - set(stored):  # emptied elsewhere (another replica, an erasure)
            metrics.EVIDENCE_BYTES.labels(tenant=tenant).set(0)
        for tenant, nbytes in stored.items():
            metrics.EVIDENCE_BYTES.labels(tenant=tenant).set(nbytes)
        self._reported |= set(stored)
        return count

    def start_purging(self) -> None:
        """Purge now and every `DFG_EVIDENCE_PURGE_INTERVAL_SECONDS` on a daemon thread until `close`; a
        store that is down is tried again at the next interval (reads hide expired evidence meanwhile)."""
        if self._purger is not None:
            return
        self._purger = threading.Thread(target=self._purge_loop, name="dfguard-evidence-purge", daemon=True)
        self._purger.start()

    def _purge_loop(self) -> None:
        while not self._stop.is_set():
            try:
                count = self.purge()
                if count:
                    log.info("expired evidence purged", extra={"count": count})
            except Exception as exc:  # noqa: BLE001 - the next pass tries again
                log.warning("evidence purge failed", extra={"error": brief_error(exc)})
            self._stop.wait(self.settings.evidence_purge_interval_seconds)

    def close(self) -> None:
        """Stop purging and close the overlay lane (it finishes what is queued, within its timeout)."""
        self._stop.set()
        if self._purger is not None:
            self._purger.join(5.0)
        if self.lane is not None:
            self.lane.close()
