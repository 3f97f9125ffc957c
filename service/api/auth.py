"""API keys -> tenants. Keys come from settings (`DFG_API_KEYS`); with none configured, auth is off and every
caller is the tenant `default` (the embedded single-tenant default)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from service.errors import Forbidden, Unauthorized

__all__ = ["Caller", "CallerDep", "require_writer"]


@dataclass(frozen=True)
class Caller:
    tenant: str
    can_write: bool


def _lookup(keys: dict[str, str], presented: str) -> str | None:
    # compare against every key in constant time per key, so timing does not reveal a prefix
    found = None
    for key, tenant in keys.items():
        if hmac.compare_digest(key.encode(), presented.encode()):
            found = tenant
    return found


def caller(request: Request) -> Caller:
    keys: dict[str, str] = request.app.state.settings.api_keys
    if not keys:
        return Caller(tenant="default", can_write=True)
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
    entry = _lookup(keys, token.strip())
    if entry is None:
        raise Unauthorized("unknown API key")
    tenant, _, scope = entry.partition(":")
    return Caller(tenant=tenant, can_write=scope != "read")


CallerDep = Annotated[Caller, Depends(caller)]


def require_writer(who: CallerDep) -> Caller:
    if not who.can_write:
        raise Forbidden("this API key may only read")
    return who
