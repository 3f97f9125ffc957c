"""The Kafka worker: `videos.uploaded` in, `moderation.flags` out (plus the DLQ), decisions in the store."""

from __future__ import annotations

from service.compose import build_evidence_keeper, build_pipeline, build_shadow_lane
from service.config import Settings
from service.evidence.keeper import EvidenceKeeper
from service.pipeline import Pipeline
from service.shadow import ShadowLane
from service.store import DecisionStore
from service.worker.dependencies import (
    LazyStore,
    inference_probe,
    kafka_probe,
    object_store_probe,
    store_probe,
)
from service.worker.handler import Emission, EventHandler
from service.worker.health import Health
from service.worker.runner import Worker

__all__ = ["Emission", "EventHandler", "Health", "Worker", "build_worker"]


def build_worker(
    settings: Settings,
    pipeline: Pipeline | None = None,
    store: DecisionStore | None = None,
    *,
    shadow: ShadowLane | None = None,
    evidence: EvidenceKeeper | None = None,
) -> Worker:
    """A worker over the given (or newly built) pipeline and store; `run()` it in a thread or the main one.

    A pipeline built here is the gateway's (`build_pipeline`): events scored at once share backend calls.
    Nothing here needs the database or Triton to be up: the store opens once it answers, and until every
    dependency's probe passes the worker holds.

    `shadow`: a shadow lane to share (the gateway's, with `serve --with-worker`); without one the worker
    builds its own from `DFG_SHADOW_MODEL_PATHS`, storing through the worker's store, and closes it when it
    stops. `evidence`: the same for the evidence keeper (`DFG_EVIDENCE_FOR`), which also purges expired
    evidence while the worker runs."""
    pipeline = pipeline or build_pipeline(settings)
    stores = (
        LazyStore(store=store)
        if store is not None
        else LazyStore(settings.database_url, migrate=settings.database_migrate_on_start)
    )
    probes = [
        inference_probe(pipeline.backend),
        store_probe(stores),
        kafka_probe(settings.kafka_bootstrap_servers, settings.worker_probe_timeout_seconds),
    ]
    if settings.s3_enabled:  # the handler's fetches hold on the same endpoint this probes
        from service.s3 import S3Access

        probes.append(object_store_probe(S3Access(settings)))
    health = Health.from_settings(probes, settings)
    owns_shadow = shadow is None
    if shadow is None:
        shadow = build_shadow_lane(settings, lambda verdict: stores.get().put_shadow(verdict))
    owns_evidence = evidence is None
    if evidence is None:
        evidence = build_evidence_keeper(settings, stores.get)
        if evidence is not None:
            evidence.start_purging()
    handler = EventHandler(
        settings,
        pipeline,
        stores,
        health,
        shadow=shadow,
        owns_shadow=owns_shadow,
        evidence=evidence,
        owns_evidence=owns_evidence,
    )
    return Worker(settings, handler)
