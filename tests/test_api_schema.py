"""Schemathesis against the gateway's own OpenAPI document, over a real socket.

Every generated request must get a documented status, a body matching its schema, and never a 5xx.
The JSON bodies may name arbitrary URLs: name resolution is replaced (in this module only) by a resolver that
answers a private address, so every fetch is refused before any connection and nothing leaves loopback.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from devtools.servers import gateway
from service import sources
from service.config import Settings


@pytest.fixture(scope="module")
def api_url() -> Iterator[str]:
    patch = pytest.MonkeyPatch()
    patch.setattr(sources, "_resolve", lambda host, port: (ipaddress.ip_address("10.0.0.1"),))
    try:
        with gateway(Settings(max_media_bytes=2_000_000, request_timeout_seconds=30)) as (url, _):
            yield url
    finally:
        patch.undo()


def _operations(url: str) -> list[Any]:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def test_every_operation_conforms_to_the_schema(api_url: str) -> None:
    operations = _operations(api_url)
    assert {op.label for op in operations} >= {"POST /v1/score", "POST /v1/jobs", "GET /v1/jobs/{job_id}"}
    for op in operations:

        @given(case=op.as_strategy())
        @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            # Media and URLs valid by schema can still be unanalysable or unreachable (4xx by design), so
            # "valid data must be accepted" cannot hold here; every other check does.
            case.call_and_validate(excluded_checks=[positive_data_acceptance])

        check()
