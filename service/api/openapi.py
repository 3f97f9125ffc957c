"""OpenAPI fragments shared by the routes: the media request body and the error responses."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from service.schemas import ErrorBody

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "Malformed request (invalid_request, invalid_url, url_not_allowed) or empty media",
        401: "Missing or unknown API key",
        403: "The API key may not do this",
        404: "No such job / decision for this tenant, or media not found",
        408: "The upload arrived too slowly (upload_timeout)",
        413: "Media over the byte limit",
        415: "Unsupported media, or unsupported request content type",
        422: "Corrupt or undecodable media, no video stream, over resolution or duration limit, fetch failed",
        429: "Over capacity, or over the tenant's rate (rate_limited); see Retry-After",
        500: "Internal error",
        503: "Inference backend unavailable",
        504: "Deadline exceeded",
    }.items()
}


def media_body(json_model: type[BaseModel], extra_fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """A request body that is either a multipart upload (`file`) or JSON naming a URL."""
    properties: dict[str, Any] = {"file": {"type": "string", "format": "binary"}}
    properties.update(extra_fields or {})
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": ["file"], "properties": properties}
                },
                "application/json": {"schema": json_model.model_json_schema()},
            },
        }
    }
