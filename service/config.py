"""The one settings class: every knob of dfguard, read from `DFG_*` environment variables.

Built once by each entry point (CLI, gateway, worker) and passed down; nothing else reads the environment.
Durations are in seconds (`*_seconds`), sizes in bytes or megabytes as the name says.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Aggregation = Literal["mean", "max_face_mean_frames", "confident"]
DEFAULT_TENANT = "*"  # the key of `tenant_limits` that applies to every tenant not named there
_S3_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4_RE = re.compile(r"\d+\.\d+\.\d+\.\d+")


def s3_bucket_problem(name: str) -> str | None:
    """Why `name` is not an S3 bucket name (general-purpose bucket rules: 3-63 of `a-z 0-9 . -`, a letter or
    digit at both ends, no `..`, not an IPv4 address), or None. Legacy names with capitals are not served."""
    if not _S3_BUCKET_RE.fullmatch(name):
        return "3-63 characters of a-z, 0-9, '.' and '-', starting and ending with a letter or digit"
    if ".." in name:
        return "two adjacent periods"
    if _IPV4_RE.fullmatch(name):
        return "formatted as an IP address"
    return None


class TenantLimits(BaseModel):
    """One tenant's limits at one gateway (each replica enforces its own; see docs/performance.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate_per_second: float = Field(
        20.0, ge=0, description="Scoring submissions (POST /v1/score, /v1/jobs) per second; 0: unlimited."
    )
    burst: int = Field(40, ge=1, description="Submissions allowed at once above the rate (bucket size).")
    weight: float = Field(
        1.0, gt=0, description="Share of upload and scoring slots relative to the other active tenants."
    )
    max_pending_jobs: int | None = Field(
        None, ge=1, description="Async jobs queued or running for this tenant (default DFG_MAX_PENDING_JOBS)."
    )
    max_running: int | None = Field(
        None,
        ge=1,
        description="Scoring slots this tenant may hold at once. Default: every worker when one tenant is "
        "configured (or auth is off); all but one when several are, so another tenant's request starts at "
        "once instead of waiting for a running clip to finish.",
    )


class Settings(BaseSettings):
    """All of dfguard's configuration (env prefix `DFG_`, e.g. `DFG_FRAMES_PER_VIDEO=16`)."""

    model_config = SettingsConfigDict(env_prefix="DFG_", extra="ignore", frozen=True)

    # --- media: sampling and limits ---------------------------------------------------------------
    frames_per_video: int = Field(32, ge=1, le=256, description="Frames sampled evenly over the duration.")
    max_media_bytes: int = Field(500 * 1024 * 1024, ge=1, description="Uploads larger than this are refused.")
    max_duration_seconds: float = Field(30 * 60, gt=0, description="Longer videos are refused.")
    max_frame_pixels: int = Field(7680 * 4320, ge=1, description="Pixels per frame (default 8K UHD, 33 MP).")
    max_decoded_frames: int = Field(
        200_000, ge=1, description="Frames the decoder may produce for one video (a runaway-work guard)."
    )
    max_working_side: int = Field(
        1920,
        ge=256,
        description="Sampled frames larger than this are downscaled (longest side) before analysis.",
    )
    seek_above_seconds: float = Field(
        120.0,
        ge=0,
        description="Videos longer than this are sampled by seeking instead of decoding every frame.",
    )
    decode_threads: int = Field(2, ge=1, le=16, description="FFmpeg frame threads per decode.")
    decode_timeout_seconds: float = Field(120.0, gt=0, description="Wall-clock limit of one isolated decode.")
    decode_memory_limit_mb: int = Field(
        3072, ge=64, description="Address space the decoder process may map beyond what it inherits."
    )
    decode_isolation: Literal["process", "inline"] = Field(
        "process",
        description="`process`: decode in a child with limits (a crash costs one request); `inline`.",
    )
    decode_start_method: Literal["forkserver", "fork", "spawn"] = Field(
        "forkserver", description="How decoder children are started (forkserver is safe in threaded servers)."
    )

    # --- faces -------------------------------------------------------------------------------------
    detector: Literal["retinaface-mnet025"] = "retinaface-mnet025"
    detect_every: int = Field(
        4, ge=1, description="Run the detector on every Nth sampled frame; track between."
    )
    detect_side_video: int = Field(
        320, ge=64, description="Longest side of video frames fed to the detector."
    )
    detect_side_fallback: int = Field(
        640,
        ge=0,
        description="Key frames without a face are searched again at this longest side (small faces); "
        "0 disables the second pass.",
    )
    detect_side_image: int = Field(
        640, ge=64, description="Longest side of still images fed to the detector."
    )
    detector_threshold: float = Field(0.8, ge=0.0, le=1.0)
    detector_nms_iou: float = Field(0.4, gt=0.0, le=1.0)
    min_face_px: int = Field(
        24, ge=1, description="Faces smaller than this (shorter side, full frame) are ignored."
    )
    max_faces_per_frame: int = Field(8, ge=1)
    track_iou: float = Field(0.3, gt=0.0, le=1.0, description="IoU that links detections into one track.")
    crop_margin: float | None = Field(
        None, ge=0.0, le=1.0, description="Override of the model manifest's crop margin (fraction per side)."
    )
    classify_crops: Literal["all", "detected"] = Field(
        "detected",
        description="`detected` (default): only faces the detector found on key frames (1 in detect_every "
        "crops; tracked faces take their track's nearest score): classifying every crop with the bundled "
        "MobileNetV1 costs ~3x the classify time; `all`: every face of every sampled frame.",
    )

    # --- classifier and decision -------------------------------------------------------------------
    backend: Literal["onnxruntime", "triton"] = Field(
        "onnxruntime",
        description="`onnxruntime`: embedded, in-process; `triton`: a Triton server (triton_url).",
    )
    triton_url: str = Field("127.0.0.1:8001", description="Triton gRPC endpoint (host:port).")
    triton_timeout_seconds: float = Field(10.0, gt=0, description="Per inference call.")
    triton_retries: int = Field(2, ge=0, description="Retries of a call that failed transiently.")
    triton_shared_memory: bool = Field(
        False,
        description="Send crops through system shared memory (Triton on the same host) instead of gRPC.",
    )
    triton_breaker_failures: int = Field(5, ge=1, description="Consecutive failures that open the circuit.")
    triton_breaker_reset_seconds: float = Field(
        10.0, gt=0, description="How long an open circuit fails fast."
    )
    model_paths: list[Path] = Field(
        default_factory=list,
        description="One ensemble manifest, or model manifests (model.json) served as an ad-hoc ensemble; "
        "empty: the bundled default ensemble.",
    )
    shadow_model_paths: list[Path] = Field(
        default_factory=list,
        description="Shadow scoring: a candidate ensemble (as DFG_MODEL_PATHS) scored after the primary "
        "decision on a share of the traffic, stored beside the decision and never emitted; empty: no shadow.",
    )
    shadow_sample: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Share of media the shadow scores, chosen from the media's sha256 (a repost lands in the "
        "same arm).",
    )
    shadow_queue: int = Field(
        8,
        ge=1,
        description="Media waiting for the shadow's low-priority lane; when it is full, shadow work is "
        "skipped and counted (never queued without bound).",
    )
    inference_threads: int = Field(
        default_factory=lambda: min(2, os.cpu_count() or 1),
        ge=1,
        description="ONNX Runtime intra-op threads.",
    )
    max_batch_size: int = Field(64, ge=1, description="Crops per inference call.")
    aggregation: Aggregation | None = Field(
        None, description="Override of the ensemble manifest's aggregation (default `confident`)."
    )
    review_threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Override of the ensemble's fitted review threshold (else its manifest's, else 0.5).",
    )
    flag_threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Override of the ensemble's fitted flag threshold (else its manifest's, else 0.8).",
    )

    # --- audio: synthetic speech ----------------------------------------------------------------------
    audio_enabled: bool = Field(
        True,
        description="Score the speech of an audio track (videos with one, and audio-only uploads); false: "
        "audio is ignored and audio-only uploads are refused as `no_video_stream`.",
    )
    audio_model_path: Path | None = Field(
        None, description='Audio model manifest (`"kind": "audio"`); empty: the bundled one.'
    )
    audio_windows: int = Field(
        2,
        ge=1,
        le=16,
        description="Speech windows (~4 s each) scored per track, spread over its speech; each costs one "
        "model run (~110-150 ms on 2 CPU threads).",
    )
    audio_early_exit: bool = Field(
        False,
        description="Stop after the first window when it is clearly real speech (below the audio model's "
        "fitted `early_exit_below`): most real uploads then cost one model run instead of "
        "DFG_AUDIO_WINDOWS, but real speech spliced before a cloned voice then hides it far more often "
        "(docs/audio.md: 23 of 40 fakes caught instead of 32 with 4.5 s of real speech before them).",
    )
    audio_scan_seconds: float = Field(
        300.0,
        ge=10.0,
        description="Speech is searched in at most this much of a track: longer tracks are searched in "
        "10-s excerpts spread evenly over them (bounds the voice-activity detector's cost).",
    )
    audio_vad_threshold: float = Field(
        0.5, gt=0.0, lt=1.0, description="Voice-activity probability above which a 32-ms frame is speech."
    )
    audio_min_speech_seconds: float = Field(
        1.0, ge=0.0, description="Less detected speech than this: no audio score (`no_speech_found`)."
    )
    audio_max_sample_rate: int = Field(
        192_000, ge=8000, description="Audio streams above this sample rate are not decoded."
    )
    audio_max_channels: int = Field(
        8, ge=1, le=64, description="Audio streams with more channels are not decoded."
    )
    audio_review_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="Override of the audio model's fitted review threshold."
    )
    audio_flag_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="Override of the audio model's fitted flag threshold."
    )

    # --- gateway ----------------------------------------------------------------------------------------
    api_keys: dict[str, str] = Field(
        default_factory=dict,
        description='API key -> tenant, e.g. {"k1": "acme", "k2": "acme:read"} (":read": GET only). '
        "Empty: authentication off, every caller is tenant `default` (the embedded default).",
    )
    workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1, ge=1, description="Requests scored concurrently."
    )
    max_queue: int = Field(16, ge=0, description="Admitted requests waiting for a worker; beyond: 429.")
    request_timeout_seconds: float = Field(120.0, gt=0, description="Per-request deadline (504 past it).")
    batch_max_wait_ms: float = Field(5.0, ge=0, description="Micro-batching: wait for other requests' crops.")
    max_jobs: int = Field(10_000, ge=1, description="Async jobs kept (queued, running or finished).")
    max_pending_jobs: int = Field(
        64,
        ge=1,
        description="Async jobs queued or running per tenant (their media waits on disk); beyond: 429. "
        "A tenant's `max_pending_jobs` in DFG_TENANT_LIMITS overrides it.",
    )
    tenant_limits: dict[str, TenantLimits] = Field(
        default_factory=lambda: {DEFAULT_TENANT: TenantLimits()},
        description='Per-tenant limits, JSON: {"*": {...default...}, "acme": {"rate_per_second": 5, '
        '"burst": 10, "weight": 2, "max_pending_jobs": 16}}; a tenant not named gets "*" (or the built-in '
        'defaults when there is no "*").',
    )
    max_uploads: int = Field(
        64,
        ge=1,
        description="Request bodies read (or URLs fetched) at once, apart from scoring; more wait their "
        "turn, shared fairly between tenants.",
    )
    upload_timeout_seconds: float = Field(
        3600.0,
        gt=0,
        description="Whole-upload deadline, from the first body byte (500 MB in an hour needs ~1.2 Mbit/s); "
        "past it: 408 upload_timeout.",
    )
    upload_min_bytes_per_second: int = Field(
        16 * 1024,
        ge=0,
        description="Slowest transfer kept: an upload that falls this far behind over "
        "`upload_rate_window_seconds` is cut with 408 upload_timeout; 0: no minimum.",
    )
    upload_rate_window_seconds: float = Field(
        30.0,
        gt=0,
        description="How long an upload may stall (a mobile hand-over) before the minimum rate cuts it; "
        "also the grace at its start.",
    )
    upload_slot_wait_seconds: float = Field(
        60.0,
        gt=0,
        description="How long a request waits for an upload slot before 429 over_capacity (slots held by "
        "slow transfers free within `upload_rate_window_seconds`).",
    )
    http_header_timeout_seconds: float = Field(
        10.0, gt=0, description="A request's line and headers must arrive within this (else 408, closed)."
    )
    http_max_header_bytes: int = Field(
        64 * 1024, ge=1024, description="Request line and headers together; beyond: 431, closed."
    )
    http_keep_alive_seconds: float = Field(
        5.0, gt=0, description="An idle keep-alive connection is closed after this."
    )
    job_ttl_seconds: float = Field(3600.0, gt=0, description="Finished jobs are forgotten after this.")
    callback_secret: str = Field(
        "",
        description="HMAC-SHA256 key that signs the callbacks of every tenant without its own "
        "(DFG_CALLBACK_SECRETS); empty: none.",
    )
    callback_secrets: dict[str, list[str]] = Field(
        default_factory=dict,
        description='Per-tenant callback signing secrets, JSON: {"acme": ["new", "old"], "*": ["..."]}. '
        "Every callback carries one signature per secret (at most two), so a receiver can move to a new "
        "secret while the old one is still accepted.",
    )
    callback_allow_unsigned: bool = Field(
        False,
        description="Send callbacks unsigned for tenants without a secret; false (default): a job with a "
        "callback_url for such a tenant is refused with 400.",
    )
    upload_dir: Path | None = Field(
        None, description="Where uploads and fetched media wait for scoring (default: the system temp dir)."
    )
    max_form_parts: int = Field(
        16, ge=1, description="Parts of a multipart body (the `file` and form fields); beyond: 400."
    )
    max_http_in_flight: int = Field(
        0,
        ge=0,
        description="HTTP requests handled at once, probes and /metrics excepted (beyond: 429 with "
        "Retry-After); 0: workers + max_queue + max_uploads + 64.",
    )
    unavailable_retry_after_seconds: int = Field(
        5, ge=1, description="Retry-After of 503 answers (inference backend or decision store down)."
    )
    callback_max_attempts: int = Field(5, ge=1)
    callback_timeout_seconds: float = Field(10.0, gt=0)

    # --- fetching media by URI (gateway `url`, worker events) --------------------------------------------
    fetch_timeout_seconds: float = Field(30.0, gt=0, description="Whole-download limit for one URL.")
    fetch_connect_timeout_seconds: float = Field(5.0, gt=0)
    fetch_max_redirects: int = Field(3, ge=0)
    fetch_allow_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts or CIDRs exempt from the private-address (SSRF) refusal, e.g. an internal object "
        "store; loopback only for tests.",
    )
    file_uri_root: Path | None = Field(None, description="file:// URIs are read only under this directory.")
    # s3:// credentials are never settings: boto3's standard chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY,
    # AWS_PROFILE, ~/.aws/config and credentials, web identity, container and instance roles).
    s3_enabled: bool = Field(
        False, description="Fetch s3://bucket/key URIs (worker events, gateway `url`); off: invalid_url."
    )
    s3_endpoint_url: str | None = Field(
        None,
        description="An S3-compatible store (http(s)://host:port); unset: AWS, or AWS_ENDPOINT_URL_S3 / "
        "AWS_ENDPOINT_URL from the AWS configuration.",
    )
    s3_region: str | None = Field(
        None, description="Region requests are signed for; unset: the AWS configuration's (AWS_REGION, ...)."
    )
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="`path` for most S3-compatible stores (bucket in the path, not the host name)."
    )
    s3_buckets: dict[str, list[str]] = Field(
        default_factory=dict,
        description='Tenant -> the buckets it may read, JSON: {"acme": ["acme-uploads"], "*": ["shared"]} '
        '("*": every tenant); a tenant with no entry reads no bucket (url_not_allowed).',
    )
    s3_max_attempts: int = Field(
        3,
        ge=1,
        le=10,
        description="Tries of one GetObject on throttling, 5xx and connection errors (botocore's standard "
        "retry mode, jittered backoff) before the fetch fails (then the worker's own retries apply).",
    )

    # --- Kafka worker ---------------------------------------------------------------------------------------
    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", description="Comma-separated host:port list.")
    kafka_group_id: str = Field("dfguard-worker", description="Consumer group of the workers.")
    kafka_uploads_topic: str = "videos.uploaded"
    kafka_flags_topic: str = "moderation.flags"
    flags_schema_version: Literal[1, 2] = Field(
        2,
        description="Schema version of the flag events produced (`docs/schemas/`): 2 (revisions, open to "
        "added fields) or 1 for consumers that validate against the closed v1 schema (no `dfguard rescore`).",
    )
    kafka_dlq_topic: str = "videos.uploaded.dlq"
    kafka_client_id: str = "dfguard"
    kafka_session_timeout_ms: int = Field(
        10_000, ge=1000, description="A dead worker's partitions move to another after this."
    )
    kafka_max_poll_records: int = Field(16, ge=1, description="Records fetched per poll.")
    kafka_request_timeout_ms: int = Field(15_000, ge=1000, description="Producer/consumer request timeout.")
    worker_concurrency: int = Field(
        default_factory=lambda: os.cpu_count() or 1, ge=1, description="Events processed at once per worker."
    )
    worker_max_buffered_events: int = Field(
        256,
        ge=1,
        description="Records a worker takes off Kafka and has not finished (waiting or in flight) before it "
        "pauses its partitions (resumes at half): how far it reads past one tenant's burst to other tenants' "
        "events, and about how many records a crash leaves to redeliver.",
    )
    worker_max_attempts: int = Field(
        5,
        ge=1,
        description="Tries of an event failing transiently, or on a dependency while every health probe is "
        "up, before the DLQ; failures during a hold (a probe down) are not counted.",
    )
    worker_retry_backoff_seconds: float = Field(
        0.5, gt=0, description="First retry delay (doubles each try)."
    )
    worker_retry_backoff_max_seconds: float = Field(30.0, gt=0)
    worker_shutdown_grace_seconds: float = Field(
        60.0, gt=0, description="On SIGTERM or a rebalance, how long in-flight events may finish."
    )
    worker_rebalance_stall_seconds: float = Field(
        60.0,
        gt=0,
        description="A revocation not followed by an assignment within this long renews the subscription "
        "(a stalled rejoin would leave the worker idle in its group).",
    )
    worker_outbox_interval_seconds: float = Field(
        30.0,
        gt=0,
        description="How often the worker produces re-decisions (`dfguard rescore`) stored and not yet "
        "acknowledged by the broker (the revision outbox); also once at start.",
    )
    worker_lag_interval_seconds: float = Field(
        0.25, gt=0, description="How often the lag gauge is refreshed (one end-offsets request)."
    )
    worker_probe_interval_seconds: float = Field(
        5.0, gt=0, description="How often the dependency health probes run while all are up."
    )
    worker_probe_timeout_seconds: float = Field(
        5.0, gt=0, description="A probe that takes longer counts as failed."
    )
    worker_hold_backoff_seconds: float = Field(
        0.5, gt=0, description="While held: first re-probe delay (doubles after each failed round)."
    )
    worker_hold_backoff_max_seconds: float = Field(
        10.0, gt=0, description="While held: the longest delay between re-probes (bounds the resume delay)."
    )
    dlq_max_replays: int = Field(
        3, ge=0, description="`dfguard dlq replay` refuses a record already replayed this many times."
    )
    dlq_replay_group_id: str = Field(
        "dfguard-dlq-replay", description="Consumer group that keeps `dfguard dlq replay`'s progress."
    )
    worker_metrics_host: str = Field(
        "127.0.0.1", description="Bind address of the worker's /metrics, /healthz and /readyz."
    )
    worker_metrics_port: int = Field(9102, ge=0, le=65535, description="0: no HTTP server (no probes).")

    # --- decision store and dedup ---------------------------------------------------------------------------
    database_url: str = Field(
        "sqlite:///.cache/dfguard-decisions.sqlite3",
        description="SQLAlchemy URL of the decision store: SQLite (embedded default) or "
        "postgresql+psycopg://user:password@host/db.",
    )
    database_migrate_on_start: bool = Field(
        True,
        description="Upgrade the store's schema to the newest migration when a gateway or worker starts; "
        "false: only check it is current (operators run `dfguard db upgrade`).",
    )
    dedup_exact: bool = Field(True, description="Reuse the verdict of byte-identical media (sha256).")
    near_duplicate_max_distance: int = Field(
        10, ge=0, le=64, description="Perceptual-hash bits (of 64) two frames may differ by and still match."
    )
    near_duplicate_min_fraction: float = Field(
        0.75, gt=0.0, le=1.0, description="Share of hashed frames that must match a flagged clip's frames."
    )
    near_duplicate_frames: int = Field(8, ge=0, le=64, description="Frames hashed per video; 0 disables.")

    # --- evidence pages (docs/evidence.md) ------------------------------------------------------------------
    evidence_for: Literal["flag", "review", "all", "none"] = Field(
        "review",
        description="Decisions (worker) and jobs (gateway) that keep evidence for reviewers: `review` means "
        "review and flag; `all` every scored medium; `none` no capture.",
    )
    evidence_frames: int = Field(
        6, ge=1, le=32, description="Frames kept: the most suspicious ones, spread over the video's time."
    )
    evidence_side: int = Field(
        640, ge=64, le=1920, description="Longest side of a kept frame (JPEG), pixels."
    )
    evidence_jpeg_quality: int = Field(85, ge=30, le=100)
    evidence_occlusion_grid: int = Field(
        2,
        ge=0,
        le=16,
        description="Cells per side of the occlusion-sensitivity grid (each cell greyed and re-scored: "
        "grid^2 crops per kept face); 0: no sensitivity maps. Chosen with `python -m bench.evidence`.",
    )
    evidence_queue: int = Field(
        8,
        ge=1,
        description="Captures waiting for the low-priority overlay lane; when full, overlays are skipped "
        "(the page shows the rest) and counted.",
    )
    evidence_retention_seconds: float = Field(
        30 * 86400.0, gt=0, description="Evidence is deleted this long after capture (30 days)."
    )
    evidence_tenant_quota_bytes: int = Field(
        1 << 30,
        ge=1 << 20,
        description="Evidence bytes one tenant may keep; past it the tenant's oldest evidence is evicted.",
    )
    evidence_purge_interval_seconds: float = Field(
        600.0, gt=0, description="How often the gateway and the worker delete expired evidence."
    )
    evidence_link_secret: str = Field(
        "",
        description="Key signing evidence links (flag events' `evidence_url`, `dfguard evidence link`); "
        "empty: no signed links (pages open with an API key only).",
        repr=False,
    )
    public_url: str = Field(
        "http://127.0.0.1:8080",
        description="The gateway's address as reviewers reach it: the base of signed evidence links.",
    )

    @property
    def worker_event_budget_seconds(self) -> float:
        """Worst-case time of one attempt at one event: fetch, isolated decode, then scoring."""
        return self.fetch_timeout_seconds + self.decode_timeout_seconds + self.request_timeout_seconds

    @property
    def http_in_flight_limit(self) -> int:
        """`max_http_in_flight`, or room for every scoring place, every upload slot and light requests."""
        return self.max_http_in_flight or self.workers + self.max_queue + self.max_uploads + 64

    def limits_for(self, tenant: str) -> TenantLimits:
        """The limits of `tenant`: the `*` entry (else the built-in defaults), with what the tenant's own
        entry sets on top."""
        base = self.tenant_limits.get(DEFAULT_TENANT) or TenantLimits()
        own = self.tenant_limits.get(tenant)
        if own is None or tenant == DEFAULT_TENANT:
            return base
        return base.model_copy(update={name: getattr(own, name) for name in own.model_fields_set})

    def pending_jobs_for(self, tenant: str) -> int:
        return self.limits_for(tenant).max_pending_jobs or self.max_pending_jobs

    def upload_cap_for(self, tenant: str) -> int:
        """Upload slots `tenant` may hold at once: all with one tenant, half of them with several (a tenant
        streaming at exactly the minimum rate keeps its slots until the upload deadline)."""
        return self.max_uploads if len(self.tenants) <= 1 else max(1, self.max_uploads // 2)

    def running_cap_for(self, tenant: str) -> int:
        """Scoring slots `tenant` may hold at once (see `TenantLimits.max_running`)."""
        configured = self.limits_for(tenant).max_running
        if configured is not None:
            return min(configured, self.workers)
        return max(1, self.workers - 1) if len(self.tenants) > 1 else self.workers

    @property
    def tenants(self) -> list[str]:
        """The tenants the API keys name (`default` when auth is off)."""
        return sorted({entry.partition(":")[0] for entry in self.api_keys.values()} or {"default"})

    @property
    def kafka_max_poll_interval_ms(self) -> int:
        """Sized from the worst-case video: the poll loop only blocks while a rebalance or a shutdown waits
        (at most the grace period) for in-flight events, so twice that plus one worst-case event suffices."""
        return int(1000 * (2 * self.worker_shutdown_grace_seconds + self.worker_event_budget_seconds))

    def callback_secrets_for(self, tenant: str) -> list[str]:
        """The secrets that sign `tenant`'s callbacks: its own, else `*`'s, else `callback_secret`."""
        own = self.callback_secrets.get(tenant) or self.callback_secrets.get(DEFAULT_TENANT)
        return own or ([self.callback_secret] if self.callback_secret else [])

    @model_validator(mode="after")
    def _callback_secrets_usable(self) -> Settings:
        for tenant, secrets in self.callback_secrets.items():
            if not 1 <= len(secrets) <= 2 or not all(secrets):
                raise ValueError(f"callback_secrets[{tenant!r}]: one or two non-empty secrets (a rotation)")
        return self

    @field_validator("s3_buckets")
    @classmethod
    def _s3_bucket_names(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for tenant, buckets in value.items():
            for bucket in buckets:
                if (problem := s3_bucket_problem(bucket)) is not None:
                    raise ValueError(f"s3_buckets[{tenant!r}]: {bucket!r} is not a bucket name ({problem})")
        return value

    @field_validator("flags_schema_version", mode="before")
    @classmethod
    def _schema_version_number(cls, value: object) -> object:
        """The environment gives "1"; a Literal of ints matches no string."""
        return int(value) if isinstance(value, str) and value.strip().isdigit() else value

    @field_validator("s3_endpoint_url")
    @classmethod
    def _s3_endpoint_http(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"https?://[^/?#@\s]+/?$", value):
            raise ValueError("s3_endpoint_url must be http(s)://host[:port], with no path or credentials")
        return value

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> Settings:
        r, f = self.review_threshold, self.flag_threshold
        if r is not None and f is not None and r > f:
            raise ValueError("review_threshold must not exceed flag_threshold")
        r, f = self.audio_review_threshold, self.audio_flag_threshold
        if r is not None and f is not None and r > f:
            raise ValueError("audio_review_threshold must not exceed audio_flag_threshold")
        return self
