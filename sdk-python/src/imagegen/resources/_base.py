from typing import Any, TypeVar
from urllib.parse import quote

from .. import _model
from .._core import AsyncCore, Call, Flow, RequestOptions, SyncCore

T = TypeVar("T")


def seg(value: str | int) -> str:
    """A path segment, escaped."""
    return quote(str(value), safe="")


def one(call: Call) -> Flow[Any]:
    """A flow of a single request."""
    return (yield call)


class SyncResource:
    def __init__(self, core: SyncCore):
        self._core = core

    def _run(self, flow: Flow[T], opts: RequestOptions | None) -> T:
        return self._core.run(flow, opts)


class AsyncResource:
    def __init__(self, core: AsyncCore):
        self._core = core

    async def _run(self, flow: Flow[T], opts: RequestOptions | None) -> T:
        return await self._core.run(flow, opts)


def listing(path: str, item: type[T]) -> Flow[list[T]]:
    """A flow reading an unpaginated `{"object": "list", "data": [...]}` answer as a list."""
    page = yield Call("GET", path)
    return _model.parse(list[item], page["data"])  # type: ignore[valid-type]
