"""Every Prometheus metric dfguard exports, defined once (prefix `dfguard_`, base units, `_total` counters).

Labels carry routes, stages, models, codes and outcomes, never ids. The gateway serves them on `/metrics`.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "AUDIO_TRACKS",
    "AUDIO_WINDOWS",
    "BATCH_SIZE",
    "CLIENT_DISCONNECTS",
    "CONSUMER_LAG",
    "DECISIONS",
    "DEDUP_HITS",
    "DEDUP_LOOKUPS",
    "DEPENDENCY_UP",
    "ERRORS",
    "EVENTS_CONSUMED",
    "EVENTS_DEAD_LETTERED",
    "EVENTS_PRODUCED",
    "EVENT_LATENCY",
    "EVIDENCE_BYTES",
    "EVIDENCE_CAPTURES",
    "EVIDENCE_OVERLAYS",
    "EVIDENCE_OVERLAY_SECONDS",
    "EVIDENCE_PURGED",
    "EVIDENCE_QUEUE_DEPTH",
    "HTTP_CONNECTIONS_CUT",
    "INFERENCE_CALLS",
    "INFERENCE_DURATION",
    "IN_FLIGHT",
    "MODEL_INFO",
    "QUEUE_DEPTH",
    "REBALANCE_STALLS",
    "REQUESTS",
    "REQUEST_DURATION",
    "REVISIONS_PENDING",
    "SHADOW_DECISIONS",
    "SHADOW_QUEUE_DEPTH",
    "SHADOW_SCORE_DIFF",
    "SHADOW_SKIPPED",
    "STAGE_DURATION",
    "TENANT_ADMITTED",
    "TENANT_QUEUE_WAIT",
    "TENANT_THROTTLED",
    "UPLOADS_CUT",
    "UPLOADS_IN_PROGRESS",
    "UPLOAD_BYTES",
    "UPLOAD_CUT_REASONS",
    "WORKER_BUFFERED",
    "WORKER_DISPATCH_WAIT",
    "WORKER_HELD_SINCE",
    "WORKER_IN_FLIGHT",
    "WORKER_LAST_DECISION",
    "WORKER_PROCESSING",
    "WORKER_RETRIES",
    "init_tenant_series",
    "observe_result",
]

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0)

REQUESTS = Counter("dfguard_http_requests_total", "HTTP requests answered.", ["route", "method", "code"])
REQUEST_DURATION = Histogram(
    "dfguard_http_request_duration_seconds",
    "HTTP request latency, from the first byte received to the response.",
    ["route", "method", "code"],
    buckets=_LATENCY_BUCKETS,
)
AUDIO_TRACKS = Counter(
    "dfguard_audio_tracks_total",
    "Audio tracks analysed, by outcome: the speech's decision, `no_speech` or `error` (not decodable).",
    ["outcome"],
)
AUDIO_WINDOWS = Counter("dfguard_audio_windows_total", "Speech windows scored by the audio model.")
STAGE_DURATION = Histogram(
    "dfguard_stage_duration_seconds",
    "Time spent in one stage of the scoring pipeline.",
    ["stage"],
    buckets=_LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "dfguard_inference_batch_size",
    "Face crops per inference backend call (after cross-request micro-batching).",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 256),
)
INFERENCE_CALLS = Counter("dfguard_inference_calls_total", "Inference backend calls.", ["backend", "model"])
INFERENCE_DURATION = Histogram(
    "dfguard_inference_duration_seconds",
    "Latency of one inference backend call.",
    ["backend", "model"],
    buckets=_LATENCY_BUCKETS,
)
QUEUE_DEPTH = Gauge("dfguard_queue_depth", "Scoring requests admitted and waiting for a worker.")
IN_FLIGHT = Gauge("dfguard_in_flight_requests", "Scoring requests being processed by a worker.")
DECISIONS = Counter("dfguard_decisions_total", "Verdicts by outcome.", ["decision"])
ERRORS = Counter("dfguard_errors_total", "Errors reported to callers, by error code.", ["code"])
UPLOADS_IN_PROGRESS = Gauge(
    "dfguard_uploads_in_progress", "Request bodies being received (upload slots busy)."
)
UPLOAD_BYTES = Counter("dfguard_upload_bytes_total", "Request body bytes received for uploads.")
UPLOAD_CUT_REASONS = ("deadline", "too_slow", "too_large", "invalid", "client_gone")
UPLOADS_CUT = Counter(
    "dfguard_uploads_cut_total",
    "Uploads that did not complete, by reason: deadline and too_slow (408 upload_timeout), too_large (413), "
    "invalid (400), client_gone.",
    ["reason"],
)
HTTP_CONNECTIONS_CUT = Counter(
    "dfguard_http_connections_cut_total",
    "Connections closed by the server before a request's headers were complete, by reason "
    "(header_timeout: 408; headers_too_large: 431).",
    ["reason"],
)
# Tenants are the configured API keys' tenants (or `default`): a bounded label set, never caller input.
TENANT_ADMITTED = Counter(
    "dfguard_tenant_admitted_total", "Scoring submissions admitted, by tenant.", ["tenant"]
)
TENANT_THROTTLED = Counter(
    "dfguard_tenant_throttled_total",
    "Scoring submissions refused with 429, by tenant and reason (rate_limited, over_capacity).",
    ["tenant", "reason"],
)
TENANT_QUEUE_WAIT = Histogram(
    "dfguard_tenant_queue_wait_seconds",
    "Time a request waited for a slot, by tenant and pool (upload, scoring).",
    ["tenant", "pool"],
    buckets=_LATENCY_BUCKETS,
)
CLIENT_DISCONNECTS = Counter(
    "dfguard_client_disconnects_total",
    "Requests whose client went away before the body was read (answered 499, not an error).",
    ["route"],
)
# --- Kafka worker (served on its own port, DFG_WORKER_METRICS_PORT; in-process with `serve --with-worker`) --
EVENTS_CONSUMED = Counter("dfguard_worker_events_consumed_total", "Upload events read from Kafka.", ["topic"])
EVENTS_PRODUCED = Counter(
    "dfguard_worker_events_produced_total",
    "Flag events acknowledged by Kafka, by decision.",
    ["topic", "decision"],
)
EVENTS_DEAD_LETTERED = Counter(
    "dfguard_worker_events_dead_lettered_total",
    "Events sent to the dead-letter topic, by reason.",
    ["reason"],
)
WORKER_RETRIES = Counter(
    "dfguard_worker_retries_total", "Retries of transient faults (fetch, backend, store, Kafka).", ["reason"]
)
EVENT_LATENCY = Histogram(
    "dfguard_worker_event_latency_seconds",
    "From the upload event's uploaded_at to its flag event being acknowledged.",
    buckets=_LATENCY_BUCKETS,
)
WORKER_PROCESSING = Histogram(
    "dfguard_worker_processing_seconds",
    "From reading an event off Kafka to its flag event being acknowledged.",
    buckets=_LATENCY_BUCKETS,
)
CONSUMER_LAG = Gauge(
    "dfguard_worker_consumer_lag",
    "Records of a partition not yet committed by the group (end offset - committed offset).",
    ["group", "topic", "partition"],
)
WORKER_IN_FLIGHT = Gauge("dfguard_worker_in_flight_events", "Events being processed by this worker.")
WORKER_BUFFERED = Gauge(
    "dfguard_worker_buffered_events",
    "Records taken off Kafka and not finished (waiting for their key or a slot, or in flight).",
)
WORKER_DISPATCH_WAIT = Histogram(
    "dfguard_worker_dispatch_wait_seconds",
    "From a record being ready to run (its key idle) to an event thread starting it (fair across tenants).",
    buckets=_LATENCY_BUCKETS,
)
WORKER_LAST_DECISION = Gauge(
    "dfguard_worker_last_decision_timestamp_seconds", "Unix time of the last flag event this worker emitted."
)
DEPENDENCY_UP = Gauge(
    "dfguard_worker_dependency_up",
    "Whether the last health probe of a shared dependency succeeded (1) or failed (0).",
    ["dependency"],
)
WORKER_HELD_SINCE = Gauge(
    "dfguard_worker_held_since_timestamp_seconds",
    "Unix time since which this worker holds (a dependency probe fails); 0 while it is not held.",
)
REBALANCE_STALLS = Counter(
    "dfguard_worker_rebalance_stalls_total",
    "Rebalances that revoked this worker's partitions and assigned none in time (subscription renewed).",
)
DEDUP_LOOKUPS = Counter("dfguard_dedup_lookups_total", "Repost/near-duplicate lookups before scoring.")
DEDUP_HITS = Counter("dfguard_dedup_hits_total", "Lookups answered from a stored verdict, by kind.", ["kind"])
MODEL_INFO = Gauge("dfguard_model_info", "The models being served (value 1).", ["name", "version"])
SHADOW_DECISIONS = Counter(
    "dfguard_shadow_decisions_total",
    "Media scored by both the primary and the shadow ensemble, by the decision of each (a confusion matrix).",
    ["primary", "shadow"],
)
SHADOW_SKIPPED = Counter(
    "dfguard_shadow_skipped_total",
    "Media in the shadow's sample left unscored by it, by reason (queue_full, failed, no_faces_cut, "
    "store_unavailable, shutdown).",
    ["reason"],
)
SHADOW_SCORE_DIFF = Histogram(
    "dfguard_shadow_score_difference",
    "Shadow score minus primary score, per medium both scored.",
    buckets=(-1.0, -0.5, -0.25, -0.1, -0.05, -0.01, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0),
)
SHADOW_QUEUE_DEPTH = Gauge("dfguard_shadow_queue_depth", "Media waiting for the shadow's low-priority lane.")
REVISIONS_PENDING = Gauge(
    "dfguard_revisions_pending",
    "Re-decisions (dfguard rescore) stored whose flag event the broker has not acknowledged (the outbox).",
)
EVIDENCE_BYTES = Gauge(
    "dfguard_evidence_stored_bytes",
    "Evidence bytes (pictures and documents) stored in the decision store, by tenant.",
    ["tenant"],
)
EVIDENCE_PURGED = Counter(
    "dfguard_evidence_purged_total",
    "Evidence items deleted, by reason: expired (retention purge), quota (the tenant's oldest, evicted for a "
    "new one), erased (DELETE .../evidence).",
    ["reason"],
)
EVIDENCE_CAPTURES = Counter(
    "dfguard_evidence_captures_total",
    "Evidence captures of decisions and jobs (DFG_EVIDENCE_FOR), by outcome: stored, over_quota (one item "
    "larger than the tenant's quota), store_unavailable (lost; the decision is not).",
    ["outcome"],
)
EVIDENCE_OVERLAYS = Counter(
    "dfguard_evidence_overlays_total",
    "Sensitivity overlays of stored evidence, by outcome: ready, failed, queue_full (skipped: the lane was "
    "full), over_quota (not stored: past the tenant's quota), gone (the evidence was erased or purged "
    "meanwhile), shutdown.",
    ["outcome"],
)
EVIDENCE_OVERLAY_SECONDS = Histogram(
    "dfguard_evidence_overlay_seconds",
    "Time to compute and store one capture's sensitivity overlays on the low-priority lane.",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60),
)
EVIDENCE_QUEUE_DEPTH = Gauge(
    "dfguard_evidence_queue_depth", "Captures waiting for the evidence overlay lane."
)


def init_tenant_series(tenants: list[str]) -> None:
    """Make the gateway's tenant and upload series exist at 0 from the start (alerts and panels see them)."""
    for reason in UPLOAD_CUT_REASONS:
        UPLOADS_CUT.labels(reason=reason)
    for reason in ("header_timeout", "headers_too_large"):
        HTTP_CONNECTIONS_CUT.labels(reason=reason)
    for tenant in tenants:
        TENANT_ADMITTED.labels(tenant=tenant)
        for reason in ("rate_limited", "over_capacity"):
            TENANT_THROTTLED.labels(tenant=tenant, reason=reason)


def observe_result(decision: str, timings_ms: dict[str, float]) -> None:
    """Count one verdict and its stage timings."""
    DECISIONS.labels(decision=decision).inc()
    for stage, ms in timings_ms.items():
        if stage == "audio" and not ms:
            continue  # media without an audio track: no audio stage ran
        STAGE_DURATION.labels(stage=stage).observe(ms / 1000)
