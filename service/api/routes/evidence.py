"""Evidence pages: `GET /v1/decisions/{video_id}/evidence`, `GET /v1/jobs/{job_id}/evidence`, and erasure.

Read with an API key (the caller's tenant) or with a signed, expiring link (`?tenant=&expires=&sig=`, see
`service/evidence/links.py`), which opens that one page of that one tenant: a reviewer opens it from a queue
tool, and browsers send no bearer header. A repost (`duplicate_of:<id>`, `near_duplicate_of_flagged:<id>`)
shows its original's evidence, found within the same tenant only; reposts of another tenant's media carry no
id and show none. The HTML page is self-contained under a strict Content-Security-Policy (no script; inline
style by nonce; pictures as data: URIs); it is never cached, and sends no Referer (the link is a credential).
Video ids may hold `/` (the upload schema allows it), so the decision routes match the id as a path.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from sqlalchemy.exc import SQLAlchemyError

from service.api.auth import Caller, caller, require_writer
from service.api.openapi import ERROR_RESPONSES
from service.errors import NotFound, StoreUnavailable, Unauthorized
from service.evidence.document import EvidenceSubject
from service.evidence.links import LinkGrant, verify
from service.evidence.page import contact_sheet_png, content_security_policy, render_html
from service.store import DecisionStore
from service.store.evidence import StoredEvidence

router = APIRouter()

Format = Literal["html", "png", "json"]
_REPOST_MARKS = ("duplicate_of:", "near_duplicate_of_flagged:")
_PENDING_FOR = timedelta(minutes=10)  # overlays take seconds: pending longer than this was interrupted
_NO_STORE = {
    "cache-control": "private, no-store",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
}


@dataclass(frozen=True)
class PageQuery:
    """A page request's query: the format, and a signed link's grant where it came through one."""

    fmt: Format
    tenant: str | None
    expires: int | None
    sig: str | None


def page_query(
    fmt: Annotated[
        Format, Query(alias="format", description="`html` (the page), `png` (one contact sheet), `json`.")
    ] = "html",
    tenant: Annotated[str | None, Query(max_length=64, description="Signed link: its tenant.")] = None,
    expires: Annotated[int | None, Query(ge=0, description="Signed link: expiry, unix seconds.")] = None,
    sig: Annotated[str | None, Query(max_length=128, description="Signed link: the signature.")] = None,
) -> PageQuery:
    return PageQuery(fmt, tenant, expires, sig)


PageQueryDep = Annotated[PageQuery, Depends(page_query)]


def _tenant(request: Request, subject: EvidenceSubject, subject_id: str, q: PageQuery) -> str:
    """The tenant whose evidence may be read: the signed link's, else the API key's."""
    if q.sig is None:
        return caller(request).tenant
    secret: str = request.app.state.settings.evidence_link_secret
    if q.tenant is None or q.expires is None:
        raise Unauthorized("a signed evidence link needs `tenant`, `expires` and `sig`")
    if not verify(secret, LinkGrant(subject, subject_id, q.tenant, q.expires), q.sig, time.time()):
        raise Unauthorized("the evidence link is invalid or has expired: ask for a new one")
    return q.tenant


def _original_of(store: DecisionStore, tenant: str, video_id: str) -> str | None:
    """The id of the same tenant's original a stored repost decision names, or None."""
    decision = store.get(tenant, video_id)
    return None if decision is None else _original_in(decision.record.reasons)


def _original_in(reasons: list[str]) -> str | None:
    """The original a repost's reasons name (`duplicate_of:<id>`, ...); another tenant's names none."""
    for reason in reasons:
        for mark in _REPOST_MARKS:
            if reason.startswith(mark):
                return reason[len(mark) :]
    return None


def _find(
    store: DecisionStore, tenant: str, subject: EvidenceSubject, subject_id: str
) -> StoredEvidence | None:
    """The subject's evidence, or (a worker decision on a repost) its original's in the same tenant."""
    if subject == "job":
        return store.get_evidence(tenant, subject, subject_id)
    decision = store.get(tenant, subject_id)
    if decision is None:  # a capture whose decision was never stored explains nothing
        return None
    found = store.get_evidence(tenant, subject, subject_id)
    if found is not None:
        return found
    original = _original_in(decision.record.reasons)
    if original is None:
        return None
    shown = store.get_evidence(tenant, "decision", original)
    if shown is None:
        return None
    return StoredEvidence(
        shown.id, shown.document.model_copy(update={"shown_for": subject_id}), shown.pictures
    )


def _interrupted(found: StoredEvidence, now: datetime) -> StoredEvidence:
    """Overlays still `pending` long after the capture were interrupted (a process stopped while they were
    queued or computed): the page says they were not made, and stops reloading itself."""
    doc = found.document
    if doc.overlays != "pending" or now - doc.captured_at < _PENDING_FOR:
        return found
    return StoredEvidence(found.id, doc.model_copy(update={"overlays": "skipped"}), found.pictures)


async def _page(request: Request, subject: EvidenceSubject, subject_id: str, q: PageQuery) -> Response:
    who = _tenant(request, subject, subject_id, q)
    store: DecisionStore = request.app.state.store
    try:
        found = await asyncio.to_thread(_find, store, who, subject, subject_id)
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"the decision store is unavailable ({type(exc).__name__})") from exc
    what = "video" if subject == "decision" else "job"
    if found is None:
        raise NotFound(f"no evidence for {what} {subject_id} of this tenant (none kept, expired or erased)")
    found = _interrupted(found, datetime.now(UTC))
    if q.fmt == "json":
        return Response(found.document.model_dump_json(), media_type="application/json", headers=_NO_STORE)
    if q.fmt == "png":
        png = await asyncio.to_thread(contact_sheet_png, found.document, found.pictures)
        return Response(png, media_type="image/png", headers=_NO_STORE)
    nonce = secrets.token_urlsafe(16)
    refresh = 5 if found.document.overlays == "pending" else None
    html = await asyncio.to_thread(
        render_html, found.document, found.pictures, nonce=nonce, refresh_seconds=refresh
    )
    headers = {**_NO_STORE, "content-security-policy": content_security_policy(nonce)}
    return Response(html, media_type="text/html; charset=utf-8", headers=headers)


_PAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The evidence page (HTML), its contact sheet (`format=png`) or its data "
        "(`format=json`).",
        "content": {"text/html": {}, "image/png": {}, "application/json": {}},
    },
    **ERROR_RESPONSES,
}


@router.get(
    "/v1/decisions/{video_id:path}/evidence",
    summary="What a reviewer looks at for a worker decision: frames, faces, where the model looked, scores",
    responses=_PAGE_RESPONSES,
    response_class=Response,
)
async def decision_evidence(
    request: Request, q: PageQueryDep, video_id: str = Path(min_length=1, max_length=256)
) -> Response:
    return await _page(request, "decision", video_id, q)


@router.get(
    "/v1/jobs/{job_id}/evidence",
    summary="The evidence page of a gateway job (kept under the same retention as decisions)",
    responses=_PAGE_RESPONSES,
    response_class=Response,
)
async def job_evidence(
    request: Request, q: PageQueryDep, job_id: str = Path(min_length=1, max_length=64)
) -> Response:
    return await _page(request, "job", job_id, q)


async def _erase(request: Request, who: Caller, subject: EvidenceSubject, subject_id: str) -> Response:
    store: DecisionStore = request.app.state.store
    try:
        erased = await asyncio.to_thread(store.erase_evidence, who.tenant, subject, subject_id)
        original = None
        if not erased and subject == "decision":
            original = await asyncio.to_thread(_original_of, store, who.tenant, subject_id)
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"the decision store is unavailable ({type(exc).__name__})") from exc
    if not erased:
        what = "video" if subject == "decision" else "job"
        if original is not None:
            raise NotFound(
                f"video {subject_id} is a repost and keeps no evidence of its own: its page shows the "
                f"original's ({original}); erase that one"
            )
        raise NotFound(f"no evidence for {what} {subject_id} of this tenant")
    return Response(status_code=204)


@router.delete(
    "/v1/decisions/{video_id:path}/evidence",
    status_code=204,
    summary="Erase a video's evidence now (the decision itself stays)",
    responses=ERROR_RESPONSES,
    response_class=Response,
)
async def erase_decision_evidence(
    request: Request,
    who: Annotated[Caller, Depends(require_writer)],
    video_id: str = Path(min_length=1, max_length=256),
) -> Response:
    return await _erase(request, who, "decision", video_id)


@router.delete(
    "/v1/jobs/{job_id}/evidence",
    status_code=204,
    summary="Erase a job's evidence now",
    responses=ERROR_RESPONSES,
    response_class=Response,
)
async def erase_job_evidence(
    request: Request,
    who: Annotated[Caller, Depends(require_writer)],
    job_id: str = Path(min_length=1, max_length=64),
) -> Response:
    return await _erase(request, who, "job", job_id)
