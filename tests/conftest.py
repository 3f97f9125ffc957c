"""Fixtures shared across the suite: real media generated once per session, and one loaded pipeline."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools import media_factory as mf
from devtools.kafka_broker import KafkaBroker
from devtools.postgres_server import PostgresServer
from service.compose import build_pipeline
from service.config import Settings
from service.pipeline import Pipeline


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """Commands run in-process (`cli.main`) configure the root logger once per process, as they should: its
    handler then writes to that test's captured stderr, closed after the test, and later tests' background
    threads (Kafka clients) would log into a closed file. Each test gets the root logger back as it was."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


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
