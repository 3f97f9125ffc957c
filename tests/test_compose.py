"""One composition root: every entry point gets its pipeline from `service.compose.build_pipeline`, and the
processes that score concurrently (gateway, worker, `serve --with-worker`) put the micro-batcher in front."""

from __future__ import annotations

from pathlib import Path

from devtools.servers import gateway
from service.compose import build_pipeline
from service.config import Settings
from service.inference import OnnxRuntimeBackend
from service.inference.batcher import MicroBatchingBackend
from service.worker import build_worker


def test_the_worker_batches_like_the_gateway(tmp_path: Path, face_clip: Path) -> None:
    s = Settings(database_url=f"sqlite:///{tmp_path / 'd.sqlite3'}", batch_max_wait_ms=1)
    worker = build_worker(s)  # no Kafka connection before run()
    with gateway(s) as (_, app):
        served = app.state.pipeline
        for pipeline in (served, worker.handler.pipeline):
            assert isinstance(pipeline.backend, MicroBatchingBackend)
            assert isinstance(pipeline.backend.inner, OnnxRuntimeBackend)
            assert pipeline.backend.max_batch == s.max_batch_size
        assert worker.handler.pipeline.model_ref == served.model_ref
        assert worker.handler.pipeline.thresholds == served.thresholds
        a, b = served.score_file(face_clip), worker.handler.pipeline.score_file(face_clip)
        assert a.model_dump(exclude={"timings_ms"}) == b.model_dump(exclude={"timings_ms"})
    worker.handler.pipeline.close()
    worker.handler.store.close()


def test_a_one_caller_pipeline_has_no_batcher() -> None:
    pipeline = build_pipeline(Settings(), batching=False, warm_decoder=False)
    assert isinstance(pipeline.backend, OnnxRuntimeBackend)
    pipeline.close()
    assert not pipeline.backend.ready()
