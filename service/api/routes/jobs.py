"""`POST /v1/jobs` (202, scored in the background, optional signed callback) and `GET /v1/jobs/{job_id}`."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse

from service import metrics
from service.api.auth import Caller, CallerDep, require_writer
from service.api.intake import Intake, read_media
from service.api.jobs import Job, deliver_callback
from service.api.openapi import ERROR_RESPONSES, media_body
from service.api.tenancy import admit_job
from service.config import Settings
from service.errors import InternalError, InvalidRequest, ModerationError, NotFound
from service.schemas import JobAccepted, JobRequest, JobStatus
from service.sources import check_callback_url

router = APIRouter()
log = logging.getLogger("dfguard.jobs")


async def _run(app_state: Any, job: Job, intake: Intake) -> None:
    job.set_running()
    try:
        # Accepted work: it waits its tenant's fair turn for a slot, however long the queue (bounded by the
        # tenant's max_pending_jobs); the scoring deadline starts once it has the slot.
        result = await app_state.scoring.score(intake.path, None, job.tenant, bounded=False, job_id=job.id)
        job.succeed(result)
        metrics.observe_result(result.decision, result.timings_ms.model_dump())
    except ModerationError as exc:
        job.fail(exc)
        metrics.ERRORS.labels(code=exc.code).inc()
    except Exception as exc:
        log.exception("job failed", extra={"job_id": job.id})
        job.fail(InternalError(f"{type(exc).__name__}: {exc}"))
        metrics.ERRORS.labels(code="internal_error").inc()
    finally:
        intake.remove()
    if job.callback_url:
        await deliver_callback(job, app_state.settings, app_state.fetch_policy)


def _require_signing(settings: Settings, tenant: str) -> None:
    """Callbacks are signed unless unsigned ones are allowed explicitly: a receiver must be able to tell a
    verdict from dfguard from a forged one."""
    if not settings.callback_secrets_for(tenant) and not settings.callback_allow_unsigned:
        raise InvalidRequest(
            f"callbacks are signed and tenant {tenant} has no callback secret (DFG_CALLBACK_SECRETS); "
            "poll GET /v1/jobs/{job_id} instead"
        )


@router.post(
    "/v1/jobs",
    status_code=202,
    response_model=JobAccepted,
    summary="Score a video, image or audio file in the background",
    responses=ERROR_RESPONSES,
    openapi_extra=media_body(JobRequest, {"callback_url": {"type": "string"}}),
)
async def create_job(request: Request, who: Annotated[Caller, Depends(require_writer)]) -> Any:
    state = request.app.state
    # Reserve first: a full store refuses before any upload. The upload's own deadline and minimum rate
    # keep a body trickled in slowly from holding the pending-job place for long.
    limit = state.settings.pending_jobs_for(who.tenant)
    job = admit_job(state, who.tenant, lambda: state.jobs.create(who.tenant, None, limit))
    try:
        intake, body = await read_media(request, JobRequest, who.tenant)
        callback = body.callback_url if body is not None else intake.fields.get("callback_url") or None
        if callback:
            try:
                _require_signing(state.settings, who.tenant)
                await asyncio.to_thread(check_callback_url, callback, state.fetch_policy)
            except BaseException:
                intake.remove()
                raise
        job.callback_url = callback
    except BaseException:
        state.jobs.discard(job.id)
        raise
    task = asyncio.create_task(_run(state, job, intake), name=f"job-{job.id}")
    state.tasks.add(task)
    task.add_done_callback(state.tasks.discard)
    accepted = JobAccepted(job_id=job.id, status=job.status, status_url=f"/v1/jobs/{job.id}")
    return JSONResponse(accepted.model_dump(), status_code=202, headers={"location": accepted.status_url})


@router.get(
    "/v1/jobs/{job_id}",
    response_model=JobStatus,
    summary="The state of a job, with its result when finished",
    responses=ERROR_RESPONSES,
)
async def get_job(request: Request, who: CallerDep, job_id: str = Path(min_length=1, max_length=64)) -> Any:
    job = request.app.state.jobs.get(who.tenant, job_id)
    if job is None:
        raise NotFound(f"no job {job_id} for this tenant")
    return job.view()
