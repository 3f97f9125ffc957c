"""`s3://bucket/key` sources against a real S3-compatible server (versitygw on 127.0.0.1, POSIX backend).

The store holds three buckets: `acme-media` (read by dfguard's own gateway user through a bucket policy),
`vault` (the root user's, never granted: a real `AccessDenied`) and `globex-media` (another tenant's).
dfguard reads with the `dfguard` user's keys from the standard AWS environment variables, as in production.
The parser's tests need no server.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import string
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from devtools import media_factory as mf
from devtools.kafka_broker import KafkaBroker
from devtools.kafka_tools import (
    Producer,
    Topics,
    create_topics,
    read_to_end,
    read_topic,
    running_worker,
    upload_event,
)
from devtools.s3_server import S3Server
from devtools.servers import gateway, wait_until
from service.config import Settings
from service.errors import (
    Action,
    DeadlineExceeded,
    InvalidUrl,
    MediaNotFound,
    MediaTooLarge,
    ObjectAccessDenied,
    ObjectStoreUnavailable,
    UrlNotAllowed,
    classify,
)
from service.events import FlagEvent
from service.pipeline import Pipeline
from service.s3 import S3Access, S3Location, parse_s3_uri
from service.sources import FetchPolicy, _Sink, fetch_to_file, fetch_to_file_sync
from service.worker import build_worker

DFGUARD_ACCESS = "dfguard-reader"
DFGUARD_SECRET = "dfguard-reader-secret-0123456789"
CLIP_KEY = "uploads/2026/clip+one=(1)%20.mp4"  # taken literally, as the AWS CLI takes keys: no decoding


# --- parsing (no server) ------------------------------------------------------------------------------------

_BUCKET = st.from_regex(r"[a-z0-9][a-z0-9-]{1,20}[a-z0-9]", fullmatch=True)
_KEY = st.text(
    string.ascii_letters + string.digits + "/._-~!$&'()*+,;=:@%?#", min_size=1, max_size=200
).filter(
    # keys refused on purpose (a leading / and . or .. segments: see the parametrised refusals below)
    lambda key: not key.startswith("/") and not {".", ".."} & set(key.split("/"))
)


@given(_BUCKET, _KEY)
@example("my-bucket", "a/b/c.mp4")
@example("a.b-c", "%20?x#y")
def test_s3_uri_round_trips(bucket: str, key: str) -> None:
    assert parse_s3_uri(S3Location(bucket, key).uri) == S3Location(bucket, key)


@given(st.text(max_size=300))
@example("s3://")
@example("s3:///key")
@example("s3://bucket")
@example("s3://bucket/")
@example("s3://user@bucket/key")
@example("s3://bucket:443/key")
@example("s3://Bucket/key")
@example("s3://192.168.1.1/key")
@example("s3://a..b/key")
@example("s3://ab/key")
@example("s3://bucket/\ud800")
def test_s3_uri_parser_never_crashes(text: str) -> None:
    try:
        location = parse_s3_uri(text)
    except InvalidUrl:
        return
    assert location.uri == "s3://" + text[5:] and location.key


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("s3://bucket", "must name an object"),
        ("s3://bucket/", "must name an object"),
        ("s3://Bucket/k", "not a bucket name"),
        ("s3://10.0.0.1/k", "IP address"),
        ("s3://u@bucket/k", "no credentials"),
        ("s3://bucket/" + "k" * 1025, "at most 1024"),
        ("s3://allowed/../victim/secret.mp4", ". or .. segments"),
        ("s3://allowed/a/./b", ". or .. segments"),
        ("s3://allowed//victim/k", "start with /"),
        ("https://bucket/k", "starts with s3://"),
    ],
)
def test_malformed_s3_uris_are_invalid_url(uri: str, reason: str) -> None:
    with pytest.raises(InvalidUrl, match=reason):
        parse_s3_uri(uri)


def test_settings_refuse_bad_bucket_names_and_endpoints() -> None:
    with pytest.raises(ValueError, match="not a bucket name"):
        Settings(s3_buckets={"acme": ["Not_A_Bucket"]})
    with pytest.raises(ValueError, match="s3_endpoint_url"):
        Settings(s3_endpoint_url="http://key:secret@127.0.0.1:9000")


def test_s3_is_refused_unless_enabled(tmp_path: Path) -> None:
    policy = FetchPolicy.from_settings(Settings())
    assert policy.s3 is None
    with pytest.raises(InvalidUrl, match="DFG_S3_ENABLED"):
        fetch_to_file_sync("s3://acme-media/clip.mp4", tmp_path / "out", policy, tenant="acme")


# --- the real store -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def aws_env() -> Iterator[None]:
    """dfguard's credentials from the standard chain (environment), and nothing else of the machine's AWS
    configuration: no profile files, no instance metadata (tests reach loopback only)."""
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("AWS_")]:
            mp.delenv(name)
        mp.setenv("AWS_ACCESS_KEY_ID", DFGUARD_ACCESS)
        mp.setenv("AWS_SECRET_ACCESS_KEY", DFGUARD_SECRET)
        mp.setenv("AWS_CONFIG_FILE", "/nonexistent/dfguard-aws-config")
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/dfguard-aws-credentials")
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mf.make_face_clip(
        tmp_path_factory.mktemp("s3-media") / "clip.mp4", seconds=1.0, width=320, height=240
    )


def _stock(server: S3Server, clip: Path) -> None:
    """Buckets, objects, the dfguard user and its grant, as an operator would set them up."""
    server.create_user(DFGUARD_ACCESS, DFGUARD_SECRET)
    root = server.client()
    body = clip.read_bytes()
    for bucket in ("acme-media", "vault", "globex-media"):
        root.create_bucket(Bucket=bucket)
        root.put_object(Bucket=bucket, Key=CLIP_KEY, Body=body, ContentType="video/mp4")
    root.put_object(Bucket="acme-media", Key="big.bin", Body=os.urandom(300_000))
    for i in range(8):
        root.put_object(Bucket="acme-media", Key=f"events/{i}.mp4", Body=body, ContentType="video/mp4")
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {  # GetObject, plus ListBucket so that a missing key is a 404, not a 403 (as on AWS)
                "Effect": "Allow",
                "Principal": {"AWS": [DFGUARD_ACCESS]},
                "Action": ["s3:GetObject", "s3:ListBucket"],
                "Resource": ["arn:aws:s3:::acme-media", "arn:aws:s3:::acme-media/*"],
            }
        ],
    }
    root.put_bucket_policy(Bucket="acme-media", Policy=json.dumps(policy))


@pytest.fixture(scope="module")
def store(aws_env: None, clip: Path) -> Iterator[S3Server]:
    with S3Server() as server:
        _stock(server, clip)
        yield server


@pytest.fixture
def own_store(aws_env: None, clip: Path) -> Iterator[S3Server]:
    """A store of the test's own, for outages (stopping it disturbs no other test)."""
    with S3Server() as server:
        _stock(server, clip)
        yield server


def _settings(server: S3Server, **kw: Any) -> Settings:
    base: dict[str, Any] = {
        "s3_enabled": True,
        "s3_endpoint_url": server.endpoint,
        "s3_region": "us-east-1",
        "s3_addressing_style": "path",
        "s3_buckets": {"acme": ["acme-media", "vault", "acme-gone"], "*": ["shared-media"]},
        "s3_max_attempts": 2,
        "fetch_timeout_seconds": 10,
        "fetch_connect_timeout_seconds": 2,
        "worker_probe_timeout_seconds": 2,
    }
    return Settings(**{**base, **kw})


def _uri(bucket: str, key: str = CLIP_KEY) -> str:
    return f"s3://{bucket}/{key}"


s3 = pytest.mark.s3


@s3
def test_fetch_streams_the_object_with_its_digest(store: S3Server, clip: Path, tmp_path: Path) -> None:
    policy = FetchPolicy.from_settings(_settings(store))
    fetched = fetch_to_file_sync(_uri("acme-media"), tmp_path / "sync", policy, tenant="acme")
    assert fetched.sha256 == hashlib.sha256(clip.read_bytes()).hexdigest()
    assert fetched.size == clip.stat().st_size and fetched.content_type == "video/mp4"
    assert fetched.final_url == _uri("acme-media")
    again = asyncio.run(fetch_to_file(_uri("acme-media"), tmp_path / "async", policy, tenant="acme"))
    assert again.sha256 == fetched.sha256 and (tmp_path / "async").read_bytes() == clip.read_bytes()


@s3
def test_missing_object_or_bucket_is_media_not_found(store: S3Server, tmp_path: Path) -> None:
    policy = FetchPolicy.from_settings(_settings(store))
    for uri in (_uri("acme-media", "no/such.mp4"), _uri("acme-gone")):
        with pytest.raises(MediaNotFound):
            fetch_to_file_sync(uri, tmp_path / "out", policy, tenant="acme")
    assert classify(MediaNotFound("x")).action is Action.DEAD_LETTER
    assert not (tmp_path / "out").exists()


@s3
def test_access_denied_by_the_store_is_its_own_dead_lettered_error(store: S3Server, tmp_path: Path) -> None:
    policy = FetchPolicy.from_settings(_settings(store))
    with pytest.raises(ObjectAccessDenied) as caught:
        fetch_to_file_sync(_uri("vault"), tmp_path / "out", policy, tenant="acme")
    outcome = classify(caught.value)
    assert outcome.code == "access_denied" and outcome.code != "forbidden"
    assert outcome.action is Action.DEAD_LETTER and outcome.http_status == 403
    assert not (tmp_path / "out").exists()


@s3
def test_a_tenant_reads_only_its_buckets(store: S3Server, tmp_path: Path) -> None:
    policy = FetchPolicy.from_settings(_settings(store))
    with pytest.raises(UrlNotAllowed, match="globex-media"):
        fetch_to_file_sync(_uri("globex-media"), tmp_path / "out", policy, tenant="acme")
    with pytest.raises(UrlNotAllowed):  # a tenant with no entry reads no bucket
        fetch_to_file_sync(_uri("acme-media"), tmp_path / "out", policy, tenant="globex")
    with pytest.raises(UrlNotAllowed):  # no tenant, no bucket
        fetch_to_file_sync(_uri("acme-media"), tmp_path / "out", policy)
    assert S3Access(_settings(store)).allowed("anyone", "shared-media")  # "*": every tenant


@s3
def test_size_limit_before_and_while_streaming(store: S3Server, tmp_path: Path) -> None:
    policy = FetchPolicy.from_settings(_settings(store, max_media_bytes=100_000))
    with pytest.raises(MediaTooLarge, match="300000 bytes"):  # the declared length: nothing is read
        fetch_to_file_sync(_uri("acme-media", "big.bin"), tmp_path / "out", policy, tenant="acme")
    assert not (tmp_path / "out").exists()
    # A body longer than its head says is cut at the limit as it streams (the sink counts what arrives).
    assert policy.s3 is not None
    obj = policy.s3.open(S3Location("acme-media", "big.bin"), max_bytes=10**9)
    try:
        with (
            pytest.raises(MediaTooLarge),
            _Sink(tmp_path / "cut", 100_000, time.monotonic() + 10, TimeoutError) as sink,
        ):
            for chunk in obj.chunks():
                sink.write(chunk)
        assert sink.size <= 100_000 and not (tmp_path / "cut").exists()
    finally:
        obj.close()


@s3
def test_the_fetch_deadline_is_honoured(store: S3Server, tmp_path: Path) -> None:
    policy = FetchPolicy.from_settings(_settings(store, fetch_timeout_seconds=0.0001))
    with pytest.raises(DeadlineExceeded):
        fetch_to_file_sync(_uri("acme-media"), tmp_path / "out", policy, tenant="acme")
    assert classify(DeadlineExceeded("x")).action is Action.RETRY
    assert not (tmp_path / "out").exists()


@s3
def test_endpoint_down_fails_the_probe_and_is_a_hold(own_store: S3Server, tmp_path: Path) -> None:
    access = S3Access(_settings(own_store))
    access.check_endpoint()
    policy = FetchPolicy.from_settings(_settings(own_store))
    own_store.stop()
    with pytest.raises(ObjectStoreUnavailable):
        access.check_endpoint()
    with pytest.raises(ObjectStoreUnavailable) as caught:
        fetch_to_file_sync(_uri("acme-media"), tmp_path / "out", policy, tenant="acme")
    outcome = classify(caught.value)
    assert outcome.action is Action.HOLD and outcome.dependency == "object_store"
    with pytest.raises(UrlNotAllowed):  # the allow-list needs no request: refused all the same
        fetch_to_file_sync(_uri("globex-media"), tmp_path / "out", policy, tenant="acme")
    own_store.start()
    access.check_endpoint()
    assert fetch_to_file_sync(_uri("acme-media"), tmp_path / "out", policy, tenant="acme").size > 0


@s3
def test_refused_credentials_are_an_outage_not_the_events_fault(
    store: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    access = S3Access(_settings(store))
    with pytest.raises(ObjectStoreUnavailable, match="InvalidAccessKeyId"):
        access.check_endpoint()
    policy = FetchPolicy(max_bytes=10**7, timeout_seconds=10, s3=access)
    with pytest.raises(ObjectStoreUnavailable):
        fetch_to_file_sync(_uri("acme-media"), tmp_path / "out", policy, tenant="acme")


# --- the gateway --------------------------------------------------------------------------------------------


def _post(url: str, key: str, media: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/score", json={"url": media}, headers={"authorization": f"Bearer {key}"}, timeout=60
    )


@s3
def test_gateway_scores_an_s3_url_and_maps_the_stores_answers(store: S3Server, tmp_path: Path) -> None:
    settings = _settings(
        store, api_keys={"k-acme": "acme"}, frames_per_video=4, database_url=f"sqlite:///{tmp_path}/d.db"
    )
    with gateway(settings) as (url, _):
        ok = _post(url, "k-acme", _uri("acme-media"))
        assert ok.status_code == 200, ok.text
        assert ok.json()["decision"] in ("allow", "review", "flag")
        for media, status, code in [
            (_uri("vault"), 403, "access_denied"),
            (_uri("globex-media"), 400, "url_not_allowed"),
            (_uri("acme-media", "missing.mp4"), 404, "media_not_found"),
            ("s3://Not_A_Bucket/x", 400, "invalid_url"),
        ]:
            r = _post(url, "k-acme", media)
            assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
        store.stop()
        try:
            down = _post(url, "k-acme", _uri("acme-media"))
            assert down.status_code == 503 and down.json()["error"]["code"] == "object_store_unavailable"
            assert int(down.headers["retry-after"]) >= 1
        finally:
            store.start()
        assert _post(url, "k-acme", _uri("acme-media")).status_code == 200


def test_gateway_with_s3_off_refuses_s3_urls_clearly(tmp_path: Path) -> None:
    with gateway(Settings(frames_per_video=4, database_url=f"sqlite:///{tmp_path}/d.db")) as (url, _):
        r = httpx.post(f"{url}/v1/score", json={"url": "s3://acme-media/clip.mp4"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_url"
    assert "DFG_S3_ENABLED" in r.json()["error"]["message"]


# --- the worker on a real Kafka broker ----------------------------------------------------------------------


def _up(dependency: str) -> float | None:
    return REGISTRY.get_sample_value("dfguard_worker_dependency_up", {"dependency": dependency})


def _retries(reason: str) -> float:
    return REGISTRY.get_sample_value("dfguard_worker_retries_total", {"reason": reason}) or 0.0


@s3
@pytest.mark.kafka
def test_worker_flags_s3_events_dead_letters_refusals_and_holds_through_an_outage(
    kafka: KafkaBroker, own_store: S3Server, pipeline: Pipeline, tmp_path: Path
) -> None:
    topics = Topics.fresh()
    create_topics(kafka.bootstrap, topics, partitions=2)
    settings = _settings(
        own_store,
        kafka_bootstrap_servers=kafka.bootstrap,
        database_url=f"sqlite:///{tmp_path / 'decisions.sqlite3'}",
        worker_concurrency=2,
        worker_max_attempts=3,
        worker_retry_backoff_seconds=0.1,
        worker_retry_backoff_max_seconds=0.5,
        worker_probe_interval_seconds=60.0,  # only the events' failures ask for a probe round
        worker_hold_backoff_seconds=0.2,
        worker_hold_backoff_max_seconds=1.0,
        worker_lag_interval_seconds=0.5,
        kafka_session_timeout_ms=6000,
        worker_shutdown_grace_seconds=20,
        **topics.settings(),
    )
    producer = Producer(kafka.bootstrap)
    try:
        with running_worker(build_worker(settings, pipeline)):
            for i in range(4):
                producer.send(topics.uploads, upload_event(f"ok-{i}", _uri("acme-media", f"events/{i}.mp4")))
            refused = {
                "denied": (_uri("vault"), b"access_denied"),
                "missing": (_uri("acme-media", "events/none.mp4"), b"media_not_found"),
                "other-tenant": (_uri("globex-media"), b"url_not_allowed"),
            }
            for video, (uri, _) in refused.items():
                producer.send(topics.uploads, upload_event(video, uri))
            flags = read_topic(kafka.bootstrap, topics.flags, 4, timeout=60)
            dlq = read_topic(kafka.bootstrap, topics.dlq, 3, timeout=30)
            assert sorted(r.key for r in flags) == [f"ok-{i}".encode() for i in range(4)]
            assert {r.key.decode(): dict(r.headers)["dfg-error-code"] for r in dlq} == {
                video: code for video, (_, code) in refused.items()
            }
            assert _up("object_store") == 1

            retried = _retries("object_store_unavailable")
            own_store.stop()  # the endpoint goes away under the running worker
            for i in range(4, 8):
                producer.send(topics.uploads, upload_event(f"ok-{i}", _uri("acme-media", f"events/{i}.mp4")))
            wait_until(lambda: _up("object_store") == 0, 30, what="the object_store probe to fail")
            assert _retries("object_store_unavailable") > retried, "an event's fetch met the outage first"
            time.sleep(3)  # held: nothing decided, nothing dead-lettered
            assert len(read_to_end(kafka.bootstrap, topics.flags)) == 4
            assert len(read_to_end(kafka.bootstrap, topics.dlq)) == 3

            own_store.start()
            flags = read_topic(kafka.bootstrap, topics.flags, 8, timeout=60)
            assert sorted(r.key for r in flags) == sorted(f"ok-{i}".encode() for i in range(8))
            assert all(FlagEvent.model_validate_json(r.value).decision for r in flags)
            assert len(read_to_end(kafka.bootstrap, topics.dlq)) == 3, "the outage cost no event"
            assert _up("object_store") == 1
    finally:
        producer.close()
