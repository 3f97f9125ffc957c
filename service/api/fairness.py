"""Per-tenant fairness at the gateway: a token bucket per tenant, and slots shared fairly between tenants.

`FairSlots` is a pool of `capacity` slots with a bounded waiting room. A free slot goes to the waiter whose
tenant holds the fewest slots per unit of weight (first come, first served within a tenant), so a tenant that
floods the pool is served one slot at a time against everyone else; a tenant may also be capped below the
capacity (`cap`), which keeps a slot free for the next tenant's request instead of making it wait for a
running one to finish (the price: a lone tenant cannot use the capped slots).

The waiting room is bounded, but a tenant below its fair share of the places (`capacity + queue`, split by
weight between the tenants that hold or wait for a slot) is never refused: a flood that filled the room while
it was alone cannot lock the next tenant out. The room can therefore be overbooked by at most one fair share
per newly arriving tenant, bounded by the number of tenants. Everything runs on the event loop: no locks.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from service.config import Settings
from service.errors import OverCapacity, RateLimited

__all__ = ["FairSlots", "SlotsFull", "TenantRates", "TokenBucket"]


class TokenBucket:
    """`rate` tokens per second up to `burst`; one token per request. `clock` is injectable for tests."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = float(burst)
        self.stamp = clock()

    def take(self) -> float:
        """Take a token: 0.0 if there was one, else the seconds until there will be one (nothing taken)."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def check(self, tenant: str) -> None:
        """Take a token or raise `RateLimited` with the whole seconds until the next one (Retry-After)."""
        wait = self.take()
        if wait > 0:
            raise RateLimited(
                f"tenant {tenant} is over its rate of {self.rate:g} requests/s (burst {self.burst})",
                retry_after_seconds=max(1, math.ceil(wait)),
            )


class TenantRates:
    """One token bucket per tenant, built on first use from the tenant's limits."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def check(self, tenant: str) -> None:
        bucket = self._buckets.get(tenant)
        if bucket is None:
            limits = self.settings.limits_for(tenant)
            bucket = self._buckets[tenant] = TokenBucket(limits.rate_per_second, limits.burst, self.clock)
        bucket.check(tenant)


class SlotsFull(OverCapacity):
    """The waiting room is full and the tenant already has its fair share of the places."""


@dataclass(eq=False)
class _Waiter:
    tenant: str
    seq: int
    future: asyncio.Future[None]
    queued: bool = True


@dataclass
class _Tenant:
    held: int = 0
    waiting: deque[_Waiter] = field(default_factory=deque)


class FairSlots:
    """`capacity` slots, at most `queue` waiters (None: unbounded), handed out fairly between tenants."""

    def __init__(
        self,
        name: str,
        capacity: int,
        queue: int | None,
        weight: Callable[[str], float] = lambda _: 1.0,
        cap: Callable[[str], int] | None = None,
    ) -> None:
        self.name = name
        self.capacity = capacity
        self.queue = queue
        self.weight = weight
        self.cap = cap or (lambda _: capacity)  # slots one tenant may hold at once
        self._tenants: dict[str, _Tenant] = {}
        self._held = 0
        self._waiting = 0
        self._seq = itertools.count()

    # --- observation ----------------------------------------------------------------------------------

    @property
    def held(self) -> int:
        return self._held

    @property
    def waiting(self) -> int:
        return self._waiting

    def held_by(self, tenant: str) -> int:
        t = self._tenants.get(tenant)
        return t.held if t else 0

    def fair_share(self, tenant: str) -> int:
        """The places (slots + waiting room) `tenant` is entitled to among the tenants active now and it."""
        places = self.capacity + (self.queue or 0)
        active = {name for name, t in self._tenants.items() if t.held or t.waiting} | {tenant}
        total = sum(self.weight(name) for name in active)
        return max(1, math.floor(places * self.weight(tenant) / total))

    def would_refuse(self, tenant: str) -> bool:
        """Whether `acquire` would raise `SlotsFull` now (cheap: callers refuse before reading a body)."""
        if self._held < self.capacity and not self._waiting:
            return False
        if self.queue is None or self._waiting < self.queue:
            return False
        t = self._tenants.get(tenant)
        places = (t.held + len(t.waiting)) if t else 0
        return places >= self.fair_share(tenant)

    def refuse(self, tenant: str) -> None:
        """Raise the `SlotsFull` of `tenant` (the caller checked `would_refuse`)."""
        raise SlotsFull(
            f"the {self.name} pool is full ({self.capacity} busy, {self._waiting} waiting) and tenant "
            f"{tenant} has its fair share of it ({self.fair_share(tenant)} places); retry later"
        )

    # --- acquire / release ------------------------------------------------------------------------------

    def _tenant(self, tenant: str) -> _Tenant:
        t = self._tenants.get(tenant)
        if t is None:
            t = self._tenants[tenant] = _Tenant()
        return t

    def _forget_if_idle(self, tenant: str) -> None:
        t = self._tenants.get(tenant)
        if t is not None and not t.held and not t.waiting:
            del self._tenants[tenant]

    async def acquire(self, tenant: str, timeout: float | None, *, bounded: bool = True) -> float:
        """Take a slot for `tenant`, waiting at most `timeout` seconds (`TimeoutError`); the seconds waited.

        `bounded=False` waits even when the room is full (work already accepted, e.g. a 202 job)."""
        if self._held < self.capacity and not self._waiting and self.held_by(tenant) < self.cap(tenant):
            self._tenant(tenant).held += 1
            self._held += 1
            return 0.0
        if bounded and self.would_refuse(tenant):
            self.refuse(tenant)
        loop = asyncio.get_running_loop()
        waiter = _Waiter(tenant, next(self._seq), loop.create_future())
        t = self._tenant(tenant)
        t.waiting.append(waiter)
        self._waiting += 1
        self._grant()  # a slot left free by capped tenants goes to this waiter at once
        started = loop.time()
        try:
            async with asyncio.timeout(timeout):
                await waiter.future
        except BaseException:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(tenant)  # granted while we were being cancelled: pass it on
            else:
                if waiter.queued:
                    t.waiting.remove(waiter)
                    self._waiting -= 1
                self._forget_if_idle(tenant)
            raise
        return loop.time() - started

    def release(self, tenant: str) -> None:
        """Give a slot back; the next waiter of the least-served tenant gets it."""
        t = self._tenants[tenant]
        t.held -= 1
        self._held -= 1
        self._forget_if_idle(tenant)
        self._grant()

    def _grant(self) -> None:
        while self._held < self.capacity and self._waiting:
            best: _Tenant | None = None
            best_key: tuple[float, int] | None = None
            for name, t in self._tenants.items():
                if not t.waiting or t.held >= self.cap(name):
                    continue
                key = (t.held / self.weight(name), t.waiting[0].seq)
                if best_key is None or key < best_key:
                    best, best_key = t, key
            if best is None:  # every waiter's tenant holds its cap: the slot stays free for others
                return
            waiter = best.waiting.popleft()
            waiter.queued = False
            self._waiting -= 1
            if waiter.future.done():  # cancelled, its task not resumed yet: it cleans up after itself
                continue
            best.held += 1
            self._held += 1
            waiter.future.set_result(None)
