"""Webhook verification: the client's `verify_callback` alone, then end to end with the gateway's real
callbacks to the README's receiver example (FastAPI under uvicorn on a loopback address)."""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import re
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from dfguard_client.webhooks import (
    InvalidSignature,
    MissingHeaders,
    StaleTimestamp,
    sign,
    verify_callback,
)

from devtools import media_factory as mf
from devtools.servers import asgi_app, gateway, wait_until
from service.config import Settings

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "clients" / "python" / "examples" / "fastapi_receiver.py"
BODY = b'{"job_id": "j1", "status": "succeeded"}'


def _headers(secrets: list[str], ts: int, body: bytes = BODY) -> dict[str, str]:
    return {
        "X-Dfguard-Timestamp": str(ts),
        "X-Dfguard-Signature": ",".join(sign(s, str(ts), body) for s in secrets),
    }


def test_sign_is_hmac_sha256_over_timestamp_dot_body() -> None:
    expected = hmac.new(b"k", b"123." + BODY, hashlib.sha256).hexdigest()
    assert sign("k", "123", BODY) == f"sha256={expected}"


def test_a_genuine_callback_verifies_and_every_fault_has_its_own_error() -> None:
    now = 1_700_000_000
    verify_callback("k", _headers(["k"], now), BODY, now=now)
    verify_callback("k", {k.lower(): v for k, v in _headers(["k"], now).items()}, BODY, now=now + 299)
    with pytest.raises(StaleTimestamp):  # a replay after the tolerance
        verify_callback("k", _headers(["k"], now), BODY, now=now + 301)
    with pytest.raises(StaleTimestamp):  # a clock far ahead is as suspicious
        verify_callback("k", _headers(["k"], now + 400), BODY, now=now)
    with pytest.raises(StaleTimestamp):
        verify_callback("k", {**_headers(["k"], now), "X-Dfguard-Timestamp": "soon"}, BODY, now=now)
    with pytest.raises(InvalidSignature):  # the body was altered
        verify_callback("k", _headers(["k"], now), BODY.replace(b"succeeded", b"failed"), now=now)
    with pytest.raises(InvalidSignature):  # the timestamp was altered (it is signed too)
        headers = _headers(["k"], now)
        verify_callback("k", {**headers, "X-Dfguard-Timestamp": str(now + 1)}, BODY, now=now)
    with pytest.raises(InvalidSignature):
        verify_callback("other", _headers(["k"], now), BODY, now=now)
    with pytest.raises(MissingHeaders):
        verify_callback("k", {"X-Dfguard-Timestamp": str(now)}, BODY, now=now)
    with pytest.raises(ValueError):
        verify_callback([], _headers(["k"], now), BODY, now=now)


def test_rotation_two_signatures_either_secret_verifies() -> None:
    now = 1_700_000_000
    headers = _headers(["new", "old"], now)
    verify_callback("old", headers, BODY, now=now)  # a receiver not moved yet
    verify_callback("new", headers, BODY, now=now)  # a receiver already moved
    verify_callback(["new", "old"], _headers(["old"], now), BODY, now=now)  # receiver moved first
    with pytest.raises(InvalidSignature):
        verify_callback("retired", headers, BODY, now=now)


def _load_example(monkeypatch: pytest.MonkeyPatch, secrets: str) -> ModuleType:
    monkeypatch.setenv("DFGUARD_CALLBACK_SECRETS", secrets)
    spec = importlib.util.spec_from_file_location("fastapi_receiver", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    return mf.make_image(tmp_path / "p.jpg")


@pytest.fixture
def receivers(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ModuleType, str, ModuleType, str]]:
    """The example receiver twice: one on the new secret, one still on the old (a rotation half done)."""
    moved = _load_example(monkeypatch, "new")
    behind = _load_example(monkeypatch, "old")
    with asgi_app(moved.app, "127.0.0.2") as moved_url, asgi_app(behind.app, "127.0.0.2") as behind_url:
        yield moved, moved_url, behind, behind_url


def _submit(url: str, photo: Path, callback: str, key: str = "key-a") -> httpx.Response:
    with open(photo, "rb") as fh:
        return httpx.post(
            f"{url}/v1/jobs",
            files={"file": ("p.jpg", fh)},
            data={"callback_url": callback},
            headers={"authorization": f"Bearer {key}"},
            timeout=30,
        )


def test_the_readme_receiver_verifies_the_gateways_real_callbacks_during_a_rotation(
    receivers: tuple[ModuleType, str, ModuleType, str], photo: Path
) -> None:
    moved, moved_url, behind, behind_url = receivers
    settings = Settings(
        api_keys={"key-a": "a"},
        callback_secrets={"a": ["new", "old"]},
        fetch_allow_hosts=["127.0.0.2/32"],
        workers=1,
    )
    with gateway(settings) as (url, _):
        for target, module in ((moved_url, moved), (behind_url, behind)):
            resp = _submit(url, photo, f"{target}/dfguard/callback")
            assert resp.status_code == 202, resp.text
            wait_until(lambda m=module: len(m.verdicts) == 1, 60)  # type: ignore[misc]
            verdict = module.verdicts[0]
            assert verdict["job_id"] == resp.json()["job_id"] and verdict["status"] == "succeeded"
            assert verdict["result"]["decision"] in ("allow", "review", "flag")
    # a forged callback is refused; a replay of a genuine one is accepted but recorded once
    forged = httpx.post(
        f"{moved_url}/dfguard/callback", content=BODY, headers=_headers(["guess"], int(time.time()))
    )
    assert forged.status_code == 401 and "signature" in forged.json()["detail"]
    ts = int(time.time())
    replay = {**_headers(["new"], ts), "x-dfguard-job-id": moved.verdicts[0]["job_id"]}
    assert httpx.post(f"{moved_url}/dfguard/callback", content=BODY, headers=replay).status_code == 200
    assert len(moved.verdicts) == 1


def test_a_callback_without_a_secret_is_refused_unless_allowed(photo: Path) -> None:
    keys = {"key-a": "a", "key-b": "b"}
    with gateway(Settings(api_keys=keys, callback_secrets={"b": ["s-b"]})) as (url, _):
        resp = _submit(url, photo, "https://hooks.example/x")
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_request"
        assert "no callback secret" in resp.json()["error"]["message"]
        assert _submit(url, photo, "").status_code == 202  # no callback: nothing to sign
    with gateway(
        Settings(api_keys=keys, callback_allow_unsigned=True, fetch_allow_hosts=["127.0.0.2/32"])
    ) as (
        url,
        _,
    ):
        assert _submit(url, photo, "http://127.0.0.2:9/x").status_code == 202  # explicitly allowed


def test_secret_lists_are_validated() -> None:
    with pytest.raises(ValueError, match="one or two"):
        Settings(callback_secrets={"a": ["1", "2", "3"]})
    with pytest.raises(ValueError, match="one or two"):
        Settings(callback_secrets={"a": [""]})
    s = Settings(callback_secret="global", callback_secrets={"a": ["own"], "*": ["star"]})
    assert s.callback_secrets_for("a") == ["own"] and s.callback_secrets_for("z") == ["star"]
    assert Settings(callback_secret="global").callback_secrets_for("z") == ["global"]


def test_the_readme_shows_the_tested_receiver() -> None:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert EXAMPLE.read_text() in blocks, "README's receiver example differs from " + str(EXAMPLE)
