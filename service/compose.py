"""The composition root: the one place a `Pipeline` is assembled from `Settings`.

Every entry point builds its pipeline here (`dfguard score`, the gateway, the Kafka worker, `serve
--with-worker`, `training/evaluate.py`), so they all get the same detector, the same backend (embedded ONNX
Runtime or Triton) and the same models. Processes that score concurrently (gateway, worker) put the
micro-batcher in front of the backend, which merges whole ensemble calls of concurrent videos into one backend
call (one Triton request); a one-caller process (the CLI, evaluation) has nothing to merge and skips it.

A shadow ensemble (`DFG_SHADOW_MODEL_PATHS`) gets a backend of its own (`build_shadow_lane`), never the
micro-batcher: its crops must not delay live ones. So does the evidence overlay lane
(`build_evidence_keeper`), which re-scores occluded copies of kept faces with the primary's own models.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from service.audio import AudioStage, SileroVad
from service.config import Settings
from service.evidence.keeper import EvidenceKeeper
from service.evidence.lane import OverlayLane
from service.faces import FaceDetector, RetinaFaceDetector
from service.inference import InferenceBackend, OnnxRuntimeBackend
from service.inference.batcher import MicroBatchingBackend
from service.media import isolation_from_settings, warm_up
from service.models import DEFAULT_AUDIO_MODEL, DEFAULT_ENSEMBLE, ModelSet, resolve_models
from service.pipeline import Pipeline
from service.shadow import ShadowLane, ShadowModels, ShadowSink
from service.store import DecisionStore
from service.triton.repo import SHADOW_ENSEMBLE

__all__ = [
    "build_backend",
    "build_detector",
    "build_evidence_keeper",
    "build_pipeline",
    "build_shadow_lane",
    "choose_audio_model",
    "choose_models",
    "choose_shadow",
]


def build_detector(s: Settings) -> FaceDetector:
    return RetinaFaceDetector(
        threads=s.inference_threads,
        threshold=s.detector_threshold,
        nms_iou=s.detector_nms_iou,
        max_faces=s.max_faces_per_frame,
    )


def choose_models(s: Settings) -> ModelSet:
    """The served models: `DFG_MODEL_PATHS` (one ensemble manifest, or model manifests), else the bundled
    default ensemble."""
    return resolve_models(list(s.model_paths) or [DEFAULT_ENSEMBLE])


def build_backend(
    s: Settings,
    models: ModelSet | None = None,
    *,
    threads: int | None = None,
    triton_ensemble: str = "ensemble",
    audio: bool = False,
) -> InferenceBackend:
    """The configured classifier backend, unbatched, serving the member models of `models`.

    Args:
        threads: ONNX Runtime intra-op threads (default `DFG_INFERENCE_THREADS`).
        triton_ensemble: the Triton ensemble model whole-ensemble calls go to.
        audio: serve the audio model too (`choose_audio_model`): the primary's backend, not a shadow's.
    """
    manifests = (models or choose_models(s)).member_paths
    audio_model = choose_audio_model(s) if audio else None
    if s.backend == "triton":
        from service.inference.triton import TritonBackend  # the gRPC client only where it is used

        return TritonBackend(
            manifests,
            s.triton_url,
            timeout_seconds=s.triton_timeout_seconds,
            retries=s.triton_retries,
            breaker_failures=s.triton_breaker_failures,
            breaker_reset_seconds=s.triton_breaker_reset_seconds,
            max_batch_size=s.max_batch_size,
            shared_memory=s.triton_shared_memory,
            ensemble_model=triton_ensemble,
            audio=audio_model,
        )
    return OnnxRuntimeBackend(
        manifests, threads=threads or s.inference_threads, max_batch_size=s.max_batch_size, audio=audio_model
    )


def choose_audio_model(s: Settings) -> Path:
    """The audio model manifest: `DFG_AUDIO_MODEL_PATH`, else the bundled one."""
    return s.audio_model_path or DEFAULT_AUDIO_MODEL


def build_pipeline(
    settings: Settings, *, batching: bool = True, warm_decoder: bool | None = None
) -> Pipeline:
    """The pipeline every entry point scores with.

    Args:
        batching: put the cross-request micro-batcher (`DFG_MAX_BATCH_SIZE`, `DFG_BATCH_MAX_WAIT_MS`) in front
            of the backend: for processes scoring several videos at once. Off for one-caller processes, where
            it could only add its wait.
        warm_decoder: start the isolated decoder's host process now, while the models load (default: when
            decoding is isolated). The CLI forks its decoder itself before loading anything.
    """
    if warm_decoder if warm_decoder is not None else settings.decode_isolation == "process":
        warm_up(isolation_from_settings(settings))
    models = choose_models(settings)
    backend = build_backend(settings, models, audio=settings.audio_enabled)
    if batching:
        backend = MicroBatchingBackend(
            backend, max_batch=settings.max_batch_size, max_wait_ms=settings.batch_max_wait_ms
        )
    audio = AudioStage(settings, SileroVad(), backend) if settings.audio_enabled else None
    return Pipeline(settings, build_detector(settings), backend, models.ensemble, audio)


def choose_shadow(s: Settings) -> ModelSet | None:
    """The shadow ensemble of `DFG_SHADOW_MODEL_PATHS` (as `DFG_MODEL_PATHS`), or None: no shadow scoring."""
    return resolve_models(list(s.shadow_model_paths)) if s.shadow_model_paths else None


def build_shadow_lane(s: Settings, sink: ShadowSink) -> ShadowLane | None:
    """The shadow's low-priority lane storing through `sink`; None without a shadow or with a zero sample.

    Its backend is its own: embedded ONNX Runtime on one thread (the primary keeps the cores), or the
    `shadow_ensemble` model on Triton.
    """
    models = choose_shadow(s)
    if models is None or s.shadow_sample <= 0.0:
        return None
    backend = build_backend(s, models, threads=1, triton_ensemble=SHADOW_ENSEMBLE)
    return ShadowLane(
        ShadowModels(backend.models, models.ensemble, s.shadow_sample), backend, sink, maxsize=s.shadow_queue
    )


def build_evidence_keeper(s: Settings, store: Callable[[], DecisionStore]) -> EvidenceKeeper | None:
    """What keeps reviewers' evidence (`DFG_EVIDENCE_FOR`), storing through `store`; None: no capture.

    Its overlay lane (none with `DFG_EVIDENCE_OCCLUSION_GRID=0`) has its own backend serving the primary's
    models, like the shadow's: embedded ONNX Runtime on one thread, or the primary ensemble on Triton through
    a client of its own, never the micro-batcher."""
    if s.evidence_for == "none":
        return None
    lane = None
    if s.evidence_occlusion_grid > 0:
        backend = build_backend(s, choose_models(s), threads=1)
        lane = OverlayLane(
            backend,
            lambda *args: keeper.store_overlays(*args),
            grid=s.evidence_occlusion_grid,
            quality=s.evidence_jpeg_quality,
            maxsize=s.evidence_queue,
        )
    keeper = EvidenceKeeper(s, store, lane)
    return keeper
