"""The HTTP core, one for each of the sync and async clients, around what they share.

Resources are written once as *flows*: generators that yield what to do (`Call` a route, `Sleep`, `Put` a file to
a presigned URL) and receive the result. `SyncCore.run` and `AsyncCore.run` drive the same flow with blocking or
awaited I/O, so the two clients cannot drift apart. Each core adds the API key, an `Idempotency-Key` on every POST
(the same across its retries, so a retried create never makes a second job), timeouts, and retries on network
errors, 408, 429 and 5xx with backoff that honours `Retry-After` (_retry.py).
"""

import asyncio
import hashlib
import io
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, TypedDict, TypeVar, Union

import httpx

from . import _model
from ._retry import is_retryable_status, retry_delay
from .errors import APIConnectionError, ImageGenError, make_error

__version__ = "0.1.0"
DEFAULT_BASE_URL = "http://127.0.0.1:8787"
T = TypeVar("T")
# Module attributes so tests can stand in for the clock.
_sleep = time.sleep
_async_sleep = asyncio.sleep


class RequestOptions(TypedDict, total=False):
    """Per-call overrides of the client's settings."""

    headers: dict[str, str]
    idempotency_key: str
    timeout: float
    max_retries: int


@dataclass
class Call:
    method: str
    path: str
    cast: Any = None
    query: Mapping[str, Any] | None = None
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    # Seconds the server may hold the answer (`Prefer: wait`), added to the timeout.
    extra_timeout: float = 0.0


@dataclass
class Sleep:
    seconds: float


ProgressCallback = Callable[[int, int], None]
FileSource = Union[bytes, str, "os.PathLike[str]", IO[bytes]]


class UploadSource:
    """A file to upload: bytes, a path or a binary file object, read in chunks (never whole into memory)."""

    CHUNK = 64 * 1024

    def __init__(self, source: FileSource):
        self.source = source
        digest, size = hashlib.sha256(), 0
        for chunk in self._chunks():
            digest.update(chunk)
            size += len(chunk)
        self.size, self.sha256 = size, digest.hexdigest()

    def _chunks(self) -> Iterator[bytes]:
        src = self.source
        if isinstance(src, bytes | bytearray | memoryview):
            stream: IO[bytes] = io.BytesIO(src)
        elif isinstance(src, str | os.PathLike):
            stream = open(src, "rb")  # noqa: SIM115 - closed below
        else:
            stream = src
            stream.seek(0)
        try:
            while chunk := stream.read(self.CHUNK):
                yield chunk
        finally:
            if stream is not src:
                stream.close()

    def chunks(self, on_progress: ProgressCallback | None) -> Iterator[bytes]:
        sent = 0
        for chunk in self._chunks():
            yield chunk
            sent += len(chunk)
            if on_progress:
                on_progress(sent, self.size)


@dataclass
class Put:
    """A PUT of a file to a presigned storage URL: no API key, Content-Length set, progress reported per chunk."""

    url: str
    headers: Mapping[str, str]
    source: UploadSource
    on_progress: ProgressCallback | None = None


Flow = Generator[Call | Sleep | Put, Any, T]


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


class BaseCore:
    def __init__(
        self,
        api_key: str | None,
        base_url: str | None,
        timeout: float,
        max_retries: int,
        default_headers: Mapping[str, str] | None,
    ):
        key = api_key or _env("IMAGEGEN_API_KEY")
        if not key:
            raise ImageGenError("imagegen: an API key is required (api_key= or IMAGEGEN_API_KEY)")
        self.api_key = key
        self.base_url = (base_url or _env("IMAGEGEN_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self.default_headers = dict(default_headers or {})

    def _headers(self, call: Call, opts: RequestOptions, accept: str = "application/json") -> dict[str, str]:
        headers = {
            "authorization": f"Bearer {self.api_key}",
            "accept": accept,
            "user-agent": f"imagegen-python/{__version__}",
            **self.default_headers,
            **call.headers,
            **opts.get("headers", {}),
        }
        if call.method == "POST":
            headers.setdefault("idempotency-key", opts.get("idempotency_key") or str(uuid.uuid4()))
        return headers

    def _build(self, client: httpx.Client | httpx.AsyncClient, call: Call, opts: RequestOptions) -> httpx.Request:
        query = {k: v for k, v in (call.query or {}).items() if v is not None}
        timeout = opts.get("timeout", self.timeout) + call.extra_timeout
        return client.build_request(
            call.method,
            self.base_url + call.path,
            params=query,
            headers=self._headers(call, opts),
            json=call.body,
            timeout=timeout,
        )

    def _error(self, response: httpx.Response, body: Any):
        # Name what was used: the usual cause of a 401 is a key for another stack, of a bare 404 a wrong base URL.
        hint = f" (API key {self.api_key[:10]}…, base URL {self.base_url})" if response.status_code == 401 else ""
        return make_error(response.status_code, body, response.headers, url=str(response.request.url), hint=hint)

    def _connection_error(self, request: httpx.Request, exc: Exception) -> APIConnectionError:
        return APIConnectionError(
            f"could not reach the imagegen API at {self.base_url} ({request.method} {request.url.path}): {exc!r}"
        )

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        try:
            return response.json() if response.content else None
        except ValueError:
            return None


class SyncCore(BaseCore):
    def __init__(self, *args: Any, http_client: httpx.Client | None = None):
        super().__init__(*args)
        self.http = http_client or httpx.Client()

    def request(self, call: Call, opts: RequestOptions | None = None) -> Any:
        opts = opts or {}
        request = self._build(self.http, call, opts)
        max_retries = opts.get("max_retries", self.max_retries)
        for attempt in range(max_retries + 1):
            try:
                response = self.http.send(request)
            except httpx.TransportError as exc:
                if attempt < max_retries:
                    _sleep(retry_delay(attempt))
                    continue
                raise self._connection_error(request, exc) from exc
            response.read()
            if response.is_success:
                return _model.parse(call.cast, self._json(response)) if call.cast else self._json(response)
            if is_retryable_status(response.status_code) and attempt < max_retries:
                _sleep(retry_delay(attempt, response.headers))
                continue
            raise self._error(response, self._json(response))
        raise AssertionError("unreachable")

    def put(self, put: Put) -> None:
        headers = {**put.headers, "content-length": str(put.source.size)}
        try:
            response = self.http.put(put.url, content=put.source.chunks(put.on_progress), headers=headers)
        except httpx.TransportError as exc:
            raise APIConnectionError(f"could not upload to storage at {put.url.split('?')[0]}: {exc!r}") from exc
        if not response.is_success:
            raise make_error(response.status_code, None, response.headers, url=put.url.split("?")[0])

    def run(self, flow: Flow[T], opts: RequestOptions | None = None) -> T:
        result: Any = None
        try:
            while True:
                step = flow.send(result)
                if isinstance(step, Call):
                    result = self.request(step, opts)
                elif isinstance(step, Sleep):
                    result = _sleep(step.seconds)
                else:
                    result = self.put(step)
        except StopIteration as done:
            return done.value

    def lines(self, path: str, headers: Mapping[str, str], opts: RequestOptions | None = None) -> Iterator[str]:
        """The lines of an event stream; raises the typed error of a refused connection, or httpx's on a drop."""
        call = Call("GET", path, headers=headers)
        request = self._build(self.http, call, opts or {})
        request.headers["accept"] = "text/event-stream"
        response = self.http.send(request, stream=True)
        try:
            if not response.is_success:
                response.read()
                raise self._error(response, self._json(response))
            yield from response.iter_lines()
        finally:
            response.close()

    def close(self) -> None:
        self.http.close()


class AsyncCore(BaseCore):
    def __init__(self, *args: Any, http_client: httpx.AsyncClient | None = None):
        super().__init__(*args)
        self.http = http_client or httpx.AsyncClient()

    async def request(self, call: Call, opts: RequestOptions | None = None) -> Any:
        opts = opts or {}
        request = self._build(self.http, call, opts)
        max_retries = opts.get("max_retries", self.max_retries)
        for attempt in range(max_retries + 1):
            try:
                response = await self.http.send(request)
            except httpx.TransportError as exc:
                if attempt < max_retries:
                    await _async_sleep(retry_delay(attempt))
                    continue
                raise self._connection_error(request, exc) from exc
            await response.aread()
            if response.is_success:
                return _model.parse(call.cast, self._json(response)) if call.cast else self._json(response)
            if is_retryable_status(response.status_code) and attempt < max_retries:
                await _async_sleep(retry_delay(attempt, response.headers))
                continue
            raise self._error(response, self._json(response))
        raise AssertionError("unreachable")

    async def put(self, put: Put) -> None:
        async def body() -> AsyncIterator[bytes]:
            for chunk in put.source.chunks(put.on_progress):
                yield chunk

        headers = {**put.headers, "content-length": str(put.source.size)}
        try:
            response = await self.http.put(put.url, content=body(), headers=headers)
        except httpx.TransportError as exc:
            raise APIConnectionError(f"could not upload to storage at {put.url.split('?')[0]}: {exc!r}") from exc
        if not response.is_success:
            raise make_error(response.status_code, None, response.headers, url=put.url.split("?")[0])

    async def run(self, flow: Flow[T], opts: RequestOptions | None = None) -> T:
        result: Any = None
        try:
            while True:
                step = flow.send(result)
                if isinstance(step, Call):
                    result = await self.request(step, opts)
                elif isinstance(step, Sleep):
                    result = await _async_sleep(step.seconds)
                else:
                    result = await self.put(step)
        except StopIteration as done:
            return done.value

    async def lines(
        self, path: str, headers: Mapping[str, str], opts: RequestOptions | None = None
    ) -> AsyncIterator[str]:
        call = Call("GET", path, headers=headers)
        request = self._build(self.http, call, opts or {})
        request.headers["accept"] = "text/event-stream"
        response = await self.http.send(request, stream=True)
        try:
            if not response.is_success:
                await response.aread()
                raise self._error(response, self._json(response))
            async for line in response.aiter_lines():
                yield line
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()
