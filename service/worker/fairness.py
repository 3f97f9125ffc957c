"""Fair dispatch across tenants: one tenant's burst never queues another tenant's events behind all of it.

Started in the order they were read, the events of a tenant that uploads a thousand videos at once would hold
every other tenant's videos back for as long as the burst takes. Instead, events ready to run wait in one FIFO
per tenant, and each free slot goes to the tenant with the fewest events in flight (ties: the tenant whose
oldest waiting event has waited longest). A tenant with waiting events thus gets its share of the slots
(concurrency / busy tenants) as soon as one event of another tenant finishes, and a lone tenant still gets
every slot (work-conserving). Within a tenant the order is kept; per-key ordering stays the caller's.

Pure and not thread-safe: no Kafka, no clock (callers pass the time an event became ready), no lock (the
worker holds its own around every call).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from itertools import count
from typing import Generic, TypeVar

__all__ = ["FairQueue", "tenant_of"]

T = TypeVar("T")
_MAX_PARSED = 64 * 1024  # a valid upload event is a few KB; anything longer is not worth parsing twice
_MAX_TENANT = 64  # as the event contract's `tenant`


def tenant_of(value: bytes | None) -> str:
    """The `tenant` field of an upload event's JSON, for fairness only; "" for anything without a valid one
    (all such events share one queue; the handler dead-letters the malformed ones anyway)."""
    if not value or len(value) > _MAX_PARSED:
        return ""
    try:
        tenant = json.loads(value).get("tenant")
    except (ValueError, RecursionError, AttributeError):  # not JSON, nested too deep, not an object
        return ""
    return tenant if isinstance(tenant, str) and len(tenant) <= _MAX_TENANT else ""


class FairQueue(Generic[T]):
    """Per-tenant FIFO queues of ready items, and per-tenant counts of items in flight."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[tuple[int, float, T]]] = {}  # tenant -> (seq, ready_at, item)
        self._running: dict[str, int] = {}  # tenant -> items popped and not finished
        self._seq = count()
        self._queued = 0
        self.in_flight = 0

    def __len__(self) -> int:
        """Items waiting (not in flight)."""
        return self._queued

    def running(self, tenant: str) -> int:
        return self._running.get(tenant, 0)

    def push(self, tenant: str, item: T, ready_at: float) -> None:
        self._queues.setdefault(tenant, deque()).append((next(self._seq), ready_at, item))
        self._queued += 1

    def pop(self) -> tuple[str, T, float] | None:
        """The next item to start, in flight for its tenant until `finished`: (tenant, item, ready_at), or
        None when nothing waits. Linear in the tenants waiting, which the worker's buffer bounds."""
        if not self._queues:
            return None
        tenant = min(self._queues, key=lambda t: (self._running.get(t, 0), self._queues[t][0][0]))
        queue = self._queues[tenant]
        _, ready_at, item = queue.popleft()
        if not queue:
            del self._queues[tenant]
        self._queued -= 1
        self._running[tenant] = self._running.get(tenant, 0) + 1
        self.in_flight += 1
        return tenant, item, ready_at

    def finished(self, tenant: str) -> None:
        left = self._running[tenant] - 1
        if left:
            self._running[tenant] = left
        else:
            del self._running[tenant]  # tenants come and go: keep only those with work in hand
        self.in_flight -= 1

    def remove(self, match: Callable[[T], bool]) -> list[T]:
        """Take every waiting item that `match`es out of the queues (a partition drained or dropped), oldest
        first per tenant; the others keep their order."""
        removed: list[T] = []
        for tenant in list(self._queues):
            kept: deque[tuple[int, float, T]] = deque()
            for entry in self._queues[tenant]:
                if match(entry[2]):
                    removed.append(entry[2])
                else:
                    kept.append(entry)
            if kept:
                self._queues[tenant] = kept
            else:
                del self._queues[tenant]
        self._queued -= len(removed)
        return removed
