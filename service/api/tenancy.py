"""The admission every scoring submission passes before its body is read: the tenant's rate, then its room
in the scoring pool (a request) or its `max_pending_jobs` (a job), so a refusal costs the client no upload
and the gateway no bandwidth. Both count by tenant: admitted, and throttled by reason."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from service import metrics
from service.api.jobs import Job
from service.errors import OverCapacity

__all__ = ["admit_job", "admit_request"]


@contextmanager
def _metered(tenant: str) -> Iterator[None]:
    try:
        yield
    except OverCapacity as exc:  # rate_limited, or over_capacity
        metrics.TENANT_THROTTLED.labels(tenant=tenant, reason=exc.code).inc()
        raise
    metrics.TENANT_ADMITTED.labels(tenant=tenant).inc()


def admit_request(state: Any, tenant: str) -> None:
    """A synchronous request: within the tenant's rate, and fitting the scoring pool's waiting room (or under
    the tenant's fair share of it); else 429."""
    with _metered(tenant):
        state.rates.check(tenant)
        if state.scoring.slots.would_refuse(tenant):
            state.scoring.slots.refuse(tenant)


def admit_job(state: Any, tenant: str, reserve: Callable[[], Job]) -> Job:
    """An async job: within the tenant's rate, and `reserve` (its place in the job store) succeeding."""
    with _metered(tenant):
        state.rates.check(tenant)
        return reserve()
