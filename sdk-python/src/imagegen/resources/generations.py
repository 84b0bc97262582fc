"""Generations: create (optionally waiting on the server), get, list and iterate, cancel, sign image URLs, and
follow one as server-sent events with reconnection."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Unpack

import httpx

from .. import _core, _model
from .._core import Call, Flow, RequestOptions, Sleep
from .._retry import is_retryable_status, retry_delay
from .._sse import SSEDecoder
from ..errors import APIConnectionError, APIError, GenerationFailedError
from ..types import CreateGeneration, Generation, GenerationList, JobStatus, SignedImageUrl
from ._base import AsyncResource, SyncResource, one, seg

TERMINAL = frozenset({"succeeded", "failed", "canceled"})
# The server holds a `Prefer: wait` answer for at most this long.
MAX_WAIT_S = 60


def _create(params: CreateGeneration, wait: int | None) -> Flow[Generation]:
    headers = {"prefer": f"wait={wait}"} if wait else {}
    return (yield Call("POST", "/v1/generations", Generation, body=params, headers=headers, extra_timeout=wait or 0))


def _create_and_wait(params: CreateGeneration, timeout_s: float) -> Flow[Generation]:
    deadline = time.monotonic() + timeout_s
    g = yield from _create(params, int(min(MAX_WAIT_S, timeout_s)))
    while g.status not in TERMINAL and time.monotonic() < deadline:
        g = yield _get(g.id)
        if g.status not in TERMINAL:
            yield Sleep(0.25)
    if g.status != "succeeded":
        code, message = (g.error.code, g.error.message) if g.error else (g.status, f"generation {g.id} is {g.status}")
        raise GenerationFailedError(g.id, code, message)
    return g


def _list(limit: int | None, after: str | None, status: JobStatus | None, model: str | None) -> Call:
    query = {"limit": limit, "after": after, "status": status, "model": model}
    return Call("GET", "/v1/generations", GenerationList, query=query)


def _get(generation_id: str) -> Call:
    return Call("GET", f"/v1/generations/{seg(generation_id)}", Generation)


def _cancel(generation_id: str) -> Call:
    return Call("POST", f"/v1/generations/{seg(generation_id)}/cancel", Generation)


def _sign(generation_id: str, index: int, expires_in_seconds: int) -> Call:
    path = f"/v1/generations/{seg(generation_id)}/images/{index}/url"
    return Call("POST", path, SignedImageUrl, body={"expires_in_seconds": expires_in_seconds})


class EventFollower:
    """The reconnection policy of `events`, apart from I/O: a dropped stream is opened again (with Last-Event-ID
    when the server gave ids) until the generation reaches a final state or `max_reconnects` drops in a row."""

    def __init__(self, generation_id: str, max_reconnects: int):
        self.path = f"/v1/generations/{seg(generation_id)}/events"
        self.decoder = SSEDecoder()
        self.max_reconnects = max_reconnects
        self.failures = 0
        self.done = False

    def headers(self) -> dict[str, str]:
        last = self.decoder.last_event_id
        return {"last-event-id": last} if last else {}

    def feed(self, line: str) -> Generation | None:
        event = self.decoder.feed(line.rstrip("\r\n"))
        if event is None or event.event != "generation":
            return None
        g: Generation = _model.parse(Generation, json.loads(event.data))
        self.failures = 0
        self.done = g.status in TERMINAL
        return g

    def reconnect_delay(self, error: Exception | None) -> float:
        """Seconds before opening the stream again; raises when it should not be."""
        if isinstance(error, APIError) and not is_retryable_status(error.status):
            raise error
        self.failures += 1
        if self.failures > self.max_reconnects:
            if isinstance(error, APIError):
                raise error
            reason = repr(error) if error else "it closed before the generation ended"
            raise APIConnectionError(f"lost the event stream {self.path} {self.failures} times: {reason}") from error
        if self.decoder.retry_ms is not None:
            return self.decoder.retry_ms / 1000
        return retry_delay(self.failures - 1, error.headers if isinstance(error, APIError) else None)


class Generations(SyncResource):
    def create(
        self, *, wait: int | None = None, opts: RequestOptions | None = None, **params: Unpack[CreateGeneration]
    ) -> Generation:
        """Queues a generation; `wait` (seconds, ≤ 60) holds the answer until it ends (`Prefer: wait`)."""
        return self._run(_create(params, wait), opts)

    def create_and_wait(
        self, *, timeout_s: float = 300, opts: RequestOptions | None = None, **params: Unpack[CreateGeneration]
    ) -> Generation:
        """Creates a generation and returns it once succeeded; raises GenerationFailedError if it fails or is
        canceled."""
        return self._run(_create_and_wait(params, timeout_s), opts)

    def get(self, generation_id: str, *, opts: RequestOptions | None = None) -> Generation:
        return self._run(one(_get(generation_id)), opts)

    def list(
        self,
        *,
        limit: int | None = None,
        after: str | None = None,
        status: JobStatus | None = None,
        model: str | None = None,
        opts: RequestOptions | None = None,
    ) -> GenerationList:
        return self._run(one(_list(limit, after, status, model)), opts)

    def iterate(
        self, *, status: JobStatus | None = None, model: str | None = None, opts: RequestOptions | None = None
    ) -> Iterator[Generation]:
        """Every generation, newest first, following the cursor page by page."""
        after: str | None = None
        while True:
            page = self.list(after=after, status=status, model=model, opts=opts)
            yield from page.data
            if not page.next_cursor:
                return
            after = page.next_cursor

    def cancel(self, generation_id: str, *, opts: RequestOptions | None = None) -> Generation:
        return self._run(one(_cancel(generation_id)), opts)

    def sign_image_url(
        self, generation_id: str, index: int, expires_in_seconds: int = 3600, *, opts: RequestOptions | None = None
    ) -> SignedImageUrl:
        """A fresh signed URL for an image, valid for `expires_in_seconds`."""
        return self._run(one(_sign(generation_id, index, expires_in_seconds)), opts)

    def events(
        self, generation_id: str, *, max_reconnects: int = 5, opts: RequestOptions | None = None
    ) -> Iterator[Generation]:
        """Follows a generation: yields it at every change of status or progress, ending with its final state."""
        follower = EventFollower(generation_id, max_reconnects)
        while True:
            error: Exception | None = None
            try:
                for line in self._core.lines(follower.path, follower.headers(), opts):
                    if g := follower.feed(line):
                        yield g
                    if follower.done:
                        return
            except (httpx.TransportError, APIError) as exc:
                error = exc
            _core._sleep(follower.reconnect_delay(error))


class AsyncGenerations(AsyncResource):
    async def create(
        self, *, wait: int | None = None, opts: RequestOptions | None = None, **params: Unpack[CreateGeneration]
    ) -> Generation:
        return await self._run(_create(params, wait), opts)

    async def create_and_wait(
        self, *, timeout_s: float = 300, opts: RequestOptions | None = None, **params: Unpack[CreateGeneration]
    ) -> Generation:
        return await self._run(_create_and_wait(params, timeout_s), opts)

    async def get(self, generation_id: str, *, opts: RequestOptions | None = None) -> Generation:
        return await self._run(one(_get(generation_id)), opts)

    async def list(
        self,
        *,
        limit: int | None = None,
        after: str | None = None,
        status: JobStatus | None = None,
        model: str | None = None,
        opts: RequestOptions | None = None,
    ) -> GenerationList:
        return await self._run(one(_list(limit, after, status, model)), opts)

    async def iterate(
        self, *, status: JobStatus | None = None, model: str | None = None, opts: RequestOptions | None = None
    ) -> AsyncIterator[Generation]:
        after: str | None = None
        while True:
            page = await self.list(after=after, status=status, model=model, opts=opts)
            for g in page.data:
                yield g
            if not page.next_cursor:
                return
            after = page.next_cursor

    async def cancel(self, generation_id: str, *, opts: RequestOptions | None = None) -> Generation:
        return await self._run(one(_cancel(generation_id)), opts)

    async def sign_image_url(
        self, generation_id: str, index: int, expires_in_seconds: int = 3600, *, opts: RequestOptions | None = None
    ) -> SignedImageUrl:
        return await self._run(one(_sign(generation_id, index, expires_in_seconds)), opts)

    async def events(
        self, generation_id: str, *, max_reconnects: int = 5, opts: RequestOptions | None = None
    ) -> AsyncIterator[Generation]:
        follower = EventFollower(generation_id, max_reconnects)
        while True:
            error: Exception | None = None
            try:
                async for line in self._core.lines(follower.path, follower.headers(), opts):
                    if g := follower.feed(line):
                        yield g
                    if follower.done:
                        return
            except (httpx.TransportError, APIError) as exc:
                error = exc
            await _core._async_sleep(follower.reconnect_delay(error))
