"""`Client` and `AsyncClient`: the plans of `_core` run over `httpx.Client` or `httpx.AsyncClient`.

Each public method is one line handing a plan to `_run`; the only code the two classes do not share is
performing an effect (send or sleep), blocking or awaited.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import closing
from types import TracebackType
from typing import Generic, Self, TypeVar

import httpx

from dfguard_client._core import Core, Done, Effect, Plan, Sleep, Source, advance
from dfguard_client.models import DecisionRecord, JobAccepted, JobStatus, ScoreResult

__all__ = ["AsyncClient", "Client"]

T = TypeVar("T")
H = TypeVar("H", httpx.Client, httpx.AsyncClient)


class _Base(Generic[H]):
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 300.0,
        max_attempts: int = 5,
        retry_timeout: float = 120.0,
        http: H | None = None,
    ) -> None:
        """`base_url` of the gateway (`http://host:8080`); `api_key` is sent as `Authorization: Bearer`.
        `timeout`: seconds per socket operation (a scoring call waits for the verdict, so it is long).
        `max_attempts`, `retry_timeout`: bounds of the retries of 429 and 503 answers (`Retry-After`).
        `http`: an httpx client of your own (proxies, TLS); it is closed with this one."""
        self._core = Core(
            base_url, api_key=api_key, timeout=timeout, max_attempts=max_attempts, retry_timeout=retry_timeout
        )
        self._http: H = http if http is not None else self._new_http()

    def _new_http(self) -> H:
        raise NotImplementedError


class Client(_Base[httpx.Client]):
    """A blocking client of the dfguard gateway; use it as a context manager, or `close()` it."""

    def _new_http(self) -> httpx.Client:
        return httpx.Client(follow_redirects=False)

    def _perform(self, effect: Effect) -> httpx.Response | httpx.TransportError | None:
        if isinstance(effect, Sleep):
            time.sleep(effect.seconds)
            return None
        try:
            return self._http.send(effect)
        except httpx.TransportError as exc:
            return exc

    def _run(self, plan: Plan[T]) -> T:
        with closing(plan):
            step = advance(plan, None)
            while not isinstance(step, Done):
                step = advance(plan, self._perform(step))
            return step.value

    def score(self, source: Source, *, filename: str | None = None) -> ScoreResult:
        """Score a file path, bytes (named `filename`) or an http(s)/s3 URL the gateway fetches, and wait."""
        return self._run(self._core.score(source, filename))

    def submit_job(
        self, source: Source, *, filename: str | None = None, callback_url: str | None = None
    ) -> JobAccepted:
        """Queue scoring; the finished job is POSTed to `callback_url` if given (signed, retried)."""
        return self._run(self._core.submit_job(source, filename, callback_url))

    def get_job(self, job_id: str) -> JobStatus:
        return self._run(self._core.get_job(job_id))

    def wait(
        self,
        job_id: str,
        *,
        timeout: float = 600.0,
        poll_interval: float = 0.25,
        max_poll_interval: float = 5.0,
    ) -> JobStatus:
        """Poll the job (backoff from `poll_interval`, doubling to `max_poll_interval`) until it succeeded;
        raises its typed error if it failed, `WaitTimeout` after `timeout` seconds."""
        return self._run(self._core.wait(job_id, timeout, poll_interval, max_poll_interval))

    def get_decision(self, video_id: str) -> DecisionRecord:
        """The decision the Kafka worker stored for one of the caller's videos."""
        return self._run(self._core.get_decision(video_id))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncClient(_Base[httpx.AsyncClient]):
    """The same client for asyncio; use it as an async context manager, or `await aclose()`."""

    def _new_http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(follow_redirects=False)

    async def _perform(self, effect: Effect) -> httpx.Response | httpx.TransportError | None:
        if isinstance(effect, Sleep):
            await asyncio.sleep(effect.seconds)
            return None
        try:
            return await self._http.send(effect)
        except httpx.TransportError as exc:
            return exc

    async def _run(self, plan: Plan[T]) -> T:
        with closing(plan):
            step = advance(plan, None)
            while not isinstance(step, Done):
                step = advance(plan, await self._perform(step))
            return step.value

    async def score(self, source: Source, *, filename: str | None = None) -> ScoreResult:
        """See `Client.score`."""
        return await self._run(self._core.score(source, filename))

    async def submit_job(
        self, source: Source, *, filename: str | None = None, callback_url: str | None = None
    ) -> JobAccepted:
        """See `Client.submit_job`."""
        return await self._run(self._core.submit_job(source, filename, callback_url))

    async def get_job(self, job_id: str) -> JobStatus:
        return await self._run(self._core.get_job(job_id))

    async def wait(
        self,
        job_id: str,
        *,
        timeout: float = 600.0,
        poll_interval: float = 0.25,
        max_poll_interval: float = 5.0,
    ) -> JobStatus:
        """See `Client.wait`."""
        return await self._run(self._core.wait(job_id, timeout, poll_interval, max_poll_interval))

    async def get_decision(self, video_id: str) -> DecisionRecord:
        """See `Client.get_decision`."""
        return await self._run(self._core.get_decision(video_id))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
