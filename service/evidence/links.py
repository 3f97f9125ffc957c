"""Signed, expiring evidence links: a reviewer opens them from a queue tool, where a browser sends no bearer.

A link names the subject (`decision` + video id, or `job` + job id), the tenant and an expiry, and carries an
HMAC-SHA256 of exactly those under `DFG_EVIDENCE_LINK_SECRET`: it opens that one page of that one tenant until
it expires, nothing else. The signature covers a versioned, length-prefixed message, so no two different
(subject, tenant, id, expiry) tuples sign alike. A link is a function of its inputs: the worker fixes a
decision's link (expiring with its evidence) before the decision is stored, so a redelivery re-emits the
same bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from service.evidence.document import EvidenceSubject

__all__ = ["LinkGrant", "evidence_path", "sign", "signed_url", "verify"]


@dataclass(frozen=True)
class LinkGrant:
    """What a valid signature grants: one subject's evidence of one tenant, until `expires` (unix seconds)."""

    subject: EvidenceSubject
    subject_id: str
    tenant: str
    expires: int


def _message(g: LinkGrant) -> bytes:
    parts = ["dfguard-evidence-v1", g.subject, g.tenant, g.subject_id, str(g.expires)]
    return b"".join(len(p.encode()).to_bytes(4, "big") + p.encode() for p in parts)


def sign(secret: str, grant: LinkGrant) -> str:
    digest = hmac.new(secret.encode(), _message(grant), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def verify(secret: str, grant: LinkGrant, signature: str, now: float) -> bool:
    """True when `signature` signs `grant` under `secret` and the grant has not expired; constant time."""
    if not secret or not signature or now >= grant.expires:
        return False
    return hmac.compare_digest(sign(secret, grant).encode(), signature.encode())


def evidence_path(subject: EvidenceSubject, subject_id: str) -> str:
    """The page's path: `/v1/decisions/{video_id}/evidence` or `/v1/jobs/{job_id}/evidence`."""
    collection = "decisions" if subject == "decision" else "jobs"
    return f"/v1/{collection}/{quote(subject_id, safe='')}/evidence"


def signed_url(base_url: str, secret: str, grant: LinkGrant) -> str:
    """The page's URL under `base_url` (`DFG_PUBLIC_URL`) with the grant's tenant, expiry and signature."""
    query = urlencode({"tenant": grant.tenant, "expires": grant.expires, "sig": sign(secret, grant)})
    return f"{base_url.rstrip('/')}{evidence_path(grant.subject, grant.subject_id)}?{query}"
