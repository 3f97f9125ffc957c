"""The Kafka worker: `videos.uploaded` in, `moderation.flags` out (plus the DLQ), decisions in the store."""

from __future__ import annotations

from service.compose import build_pipeline
from service.config import Settings
from service.pipeline import Pipeline
from service.store import DecisionStore
from service.worker.handler import EventHandler, Outcome
from service.worker.runner import Worker

__all__ = ["EventHandler", "Outcome", "Worker", "build_worker"]


def build_worker(
    settings: Settings, pipeline: Pipeline | None = None, store: DecisionStore | None = None
) -> Worker:
    """A worker over the given (or newly built) pipeline and store; `run()` it in a thread or the main one.

    A pipeline built here is the gateway's (`build_pipeline`): events scored at once share backend calls."""
    pipeline = pipeline or build_pipeline(settings)
    store = store or DecisionStore(settings.database_url, migrate=settings.database_migrate_on_start)
    return Worker(settings, EventHandler(settings, pipeline, store))
