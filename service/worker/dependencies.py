"""The worker's shared dependencies and one health probe each: the inference backend, the decision store,
Kafka and, where s3:// sources are enabled, the object store.

A probe is a quick call that raises when its dependency cannot serve: backend readiness (Triton: the server
and the ensemble ready), `SELECT 1`, a TCP connection to a broker, one signed S3 ListBuckets. Probes, not one
event's error, decide an outage (`service/worker/health.py`). The store is opened lazily, so a worker starts
(and holds) while the database is still down instead of crash-looping.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from service.errors import BackendUnavailable, StoreUnavailable
from service.inference import InferenceBackend
from service.store import DecisionStore

if TYPE_CHECKING:
    from service.s3 import S3Access

__all__ = ["LazyStore", "Probe", "inference_probe", "kafka_probe", "object_store_probe", "store_probe"]


@dataclass(frozen=True)
class Probe:
    """A named health check: returns when `name` can serve, raises (with a reason) when it cannot."""

    name: str  # the `dependency` label: inference, store, kafka, object_store
    check: Callable[[], None]


class LazyStore:
    """The decision store, opened on first use once the database answers (schema set up then)."""

    def __init__(
        self, url: str | None = None, store: DecisionStore | None = None, *, migrate: bool = True
    ) -> None:
        if url is None and store is None:
            raise ValueError("a database URL or an open store is required")
        self.url = url
        self.migrate = migrate
        self._store = store
        self._lock = threading.Lock()

    def get(self) -> DecisionStore:
        """The open store; `StoreUnavailable` while the database cannot be reached."""
        store = self._store
        if store is not None:
            return store
        with self._lock:
            if self._store is None:
                assert self.url is not None
                try:
                    self._store = DecisionStore(self.url, migrate=self.migrate)
                except SQLAlchemyError as exc:
                    reason = str(exc).splitlines()[0] if str(exc) else ""
                    raise StoreUnavailable(f"decision store: {type(exc).__name__}: {reason}") from exc
            return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def inference_probe(backend: InferenceBackend) -> Probe:
    """Ready = every model can serve (embedded: loaded; Triton: server and ensemble ready, which also closes
    an open circuit breaker, so events resumed by this probe do not meet a breaker still timing out)."""

    def check() -> None:
        if not backend.ready():
            raise BackendUnavailable(f"{backend.name} backend not ready")

    return Probe("inference", check)


def store_probe(store: LazyStore) -> Probe:
    def check() -> None:
        try:
            store.get().ping()
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from exc

    return Probe("store", check)


def kafka_probe(bootstrap_servers: str, timeout: float) -> Probe:
    """Reachable = a TCP connection to any bootstrap broker. The worker's own Kafka calls (poll, produce,
    commit) retry until the broker answers; this only makes the outage visible and holds the event threads."""
    addresses = []
    for server in bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        addresses.append((host.strip("[]") or "127.0.0.1", int(port or 9092)))

    def check() -> None:
        errors = []
        for address in addresses:
            try:
                with socket.create_connection(address, timeout=timeout):
                    return
            except OSError as exc:
                errors.append(f"{address[0]}:{address[1]}: {exc}")
        raise ConnectionError("no bootstrap broker reachable (" + "; ".join(errors) + ")")

    return Probe("kafka", check)


def object_store_probe(access: S3Access) -> Probe:
    """Up = the S3 API answers dfguard's signed request (an `AccessDenied` answer included: the store serves);
    down = no answer, a 5xx, or dfguard's own credentials refused (`S3Access.check_endpoint`)."""
    return Probe("object_store", access.check_endpoint)
