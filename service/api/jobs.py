"""Asynchronous jobs: accepted with 202, scored in the background, polled or delivered to a callback.

Jobs live in memory, scoped by tenant (another tenant's job id answers 404, like a missing one), and are
forgotten `job_ttl_seconds` after they finish; at most `max_jobs` are kept, and at most `max_pending_jobs`
(per tenant, `DFG_TENANT_LIMITS` may set it) are queued or running (then 429). A callback receives the
same document as `GET /v1/jobs/{id}` by POST, signed with HMAC-SHA256 over `"{timestamp}.{body}"` under
each of the tenant's active secrets (`X-Dfguard-Timestamp`, `X-Dfguard-Signature:
sha256=<hex>[,sha256=<hex>]`; receivers check it with `dfguard_client.verify_callback`), retried with
exponential backoff; its URL passes the same private-address (SSRF) check as media URLs, at submission and
again before every attempt. A tenant without a secret gets no callbacks unless `callback_allow_unsigned`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx

from service.config import Settings
from service.errors import FetchFailed, ModerationError, OverCapacity
from service.schemas import ErrorDetail, JobState, JobStatus, ScoreResult
from service.sources import FetchPolicy, check_callback_url

__all__ = ["Job", "JobStore", "deliver_callback", "sign"]

log = logging.getLogger("dfguard.jobs")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class Job:
    id: str
    tenant: str
    callback_url: str | None
    status: JobState = "queued"
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)
    finished_monotonic: float | None = None
    result: ScoreResult | None = None
    error: ErrorDetail | None = None

    def view(self) -> JobStatus:
        return JobStatus(
            job_id=self.id,
            status=self.status,
            created_at=self.created_at,
            updated_at=self.updated_at,
            result=self.result,
            error=self.error,
        )

    def set_running(self) -> None:
        self.status, self.updated_at = "running", _now()

    def succeed(self, result: ScoreResult) -> None:
        self.status, self.result, self.updated_at = "succeeded", result, _now()
        self.finished_monotonic = time.monotonic()

    def fail(self, exc: ModerationError) -> None:
        self.status, self.updated_at = "failed", _now()
        self.error = ErrorDetail(code=exc.code, message=exc.message)
        self.finished_monotonic = time.monotonic()


class JobStore:
    def __init__(self, max_jobs: int, ttl_seconds: float, max_pending: int) -> None:
        self.max_jobs = max_jobs
        self.max_pending = max_pending
        self.ttl = ttl_seconds
        self._jobs: dict[str, Job] = {}

    def _purge(self) -> None:
        now = time.monotonic()
        expired = [
            k
            for k, j in self._jobs.items()
            if j.finished_monotonic is not None and now - j.finished_monotonic > self.ttl
        ]
        for k in expired:
            del self._jobs[k]

    def create(self, tenant: str, callback_url: str | None, max_pending: int | None = None) -> Job:
        """A new job of `tenant`, or `OverCapacity` when the store is full or the tenant has `max_pending`
        (default: the store's) jobs queued or running."""
        self._purge()
        if len(self._jobs) >= self.max_jobs:
            raise OverCapacity(f"{self.max_jobs} jobs are pending or recent; retry later")
        limit = max_pending or self.max_pending
        pending = sum(j.finished_monotonic is None and j.tenant == tenant for j in self._jobs.values())
        if pending >= limit:
            raise OverCapacity(f"{limit} jobs of tenant {tenant} are queued or running; retry later")
        job = Job(id=uuid.uuid4().hex, tenant=tenant, callback_url=callback_url)
        self._jobs[job.id] = job
        return job

    def discard(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)

    def get(self, tenant: str, job_id: str) -> Job | None:
        job = self._jobs.get(job_id)
        return job if job is not None and job.tenant == tenant else None


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


async def deliver_callback(job: Job, settings: Settings, policy: FetchPolicy) -> bool:
    """POST the finished job to its callback URL; True once a 2xx answer arrives."""
    assert job.callback_url is not None
    body = job.view().model_dump_json().encode()
    delay = 0.5
    for attempt in range(1, settings.callback_max_attempts + 1):
        try:
            # Checked before every attempt and sent to the checked address (DNS rebinding cannot redirect it).
            resolved = await asyncio.to_thread(check_callback_url, job.callback_url, policy)
            ts = str(int(time.time()))
            headers = {
                "host": resolved.host_header,
                "content-type": "application/json",
                "x-dfguard-job-id": job.id,
                "x-dfguard-timestamp": ts,
                "x-dfguard-attempt": str(attempt),
            }
            secrets = settings.callback_secrets_for(job.tenant)
            if secrets:  # one signature per active secret: a receiver mid-rotation verifies either
                headers["x-dfguard-signature"] = ",".join(sign(secret, ts, body) for secret in secrets)
            timeout = settings.callback_timeout_seconds
            async with httpx.AsyncClient(follow_redirects=False, timeout=timeout, trust_env=False) as client:
                resp = await client.post(
                    resolved.pinned_url(), content=body, headers=headers, extensions=resolved.extensions
                )
            if 200 <= resp.status_code < 300:
                return True
            log.warning("callback answered %s", resp.status_code, extra={"job_id": job.id, "try": attempt})
        except FetchFailed as exc:  # e.g. DNS failing for now: worth another try
            log.warning("callback failed: %s", exc.message, extra={"job_id": job.id, "try": attempt})
        except ModerationError as exc:  # the URL became disallowed: retrying cannot help
            log.warning("callback refused: %s", exc.message, extra={"job_id": job.id})
            return False
        except httpx.HTTPError as exc:
            log.warning("callback failed: %s", exc, extra={"job_id": job.id, "try": attempt})
        if attempt < settings.callback_max_attempts:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
    return False
