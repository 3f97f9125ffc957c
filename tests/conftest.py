"""Fixtures shared across the suite: real media generated once per session, and one loaded pipeline."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools import media_factory as mf
from devtools.kafka_broker import KafkaBroker
from devtools.postgres_server import PostgresServer
from service.compose import build_pipeline
from service.config import Settings
from service.pipeline import Pipeline


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def face_clip(media_dir: Path) -> Path:
    """A 2-s 640x360 H.264 clip with one moving face (astronaut)."""
    return mf.make_face_clip(media_dir / "face.mp4", seconds=2.0, width=640, height=360)


@pytest.fixture(scope="session")
def face_free_clip(media_dir: Path) -> Path:
    return mf.make_face_free_clip(media_dir / "noface.mp4", seconds=2.0, width=640, height=360)


@pytest.fixture(scope="session")
def pipeline() -> Pipeline:
    return build_pipeline(Settings())  # as the gateway and the worker build it: micro-batched


@pytest.fixture(scope="session")
def kafka() -> Iterator[KafkaBroker]:
    """A real Apache Kafka broker (KRaft) on a free 127.0.0.1 port, started on first use, for the session."""
    with KafkaBroker() as broker:
        yield broker


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL cluster on a free 127.0.0.1 port, started on first use, for the session."""
    with PostgresServer() as server:
        yield server
