from collections.abc import Mapping
from typing import Any

import httpx

from ._core import AsyncCore, SyncCore
from .resources.addons import Addons, AsyncAddons
from .resources.generations import AsyncGenerations, Generations
from .resources.models_keys import AsyncKeys, AsyncModels, AsyncWebhooks, Keys, Models, Webhooks


class ImageGen:
    """The imagegen API client.

    `api_key` defaults to IMAGEGEN_API_KEY, `base_url` to IMAGEGEN_BASE_URL, else http://127.0.0.1:8787;
    `timeout` is per request in seconds (a request waiting for a job adds its wait); `max_retries` counts retries
    of network errors, 408, 429 and 5xx."""

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        default_headers: Mapping[str, str] | None = None,
        http_client: httpx.Client | None = None,
    ):
        core = SyncCore(api_key, base_url, timeout, max_retries, default_headers, http_client=http_client)
        self._core = core
        self.base_url = core.base_url
        self.generations = Generations(core)
        self.addons = Addons(core)
        self.models = Models(core)
        self.keys = Keys(core)
        self.webhooks = Webhooks(core)

    def close(self) -> None:
        self._core.close()

    def __enter__(self) -> "ImageGen":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncImageGen:
    """The same client for asyncio: every method is awaited, `events` and `iterate` are async iterators."""

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        default_headers: Mapping[str, str] | None = None,
        http_client: httpx.AsyncClient | None = None,
    ):
        core = AsyncCore(api_key, base_url, timeout, max_retries, default_headers, http_client=http_client)
        self._core = core
        self.base_url = core.base_url
        self.generations = AsyncGenerations(core)
        self.addons = AsyncAddons(core)
        self.models = AsyncModels(core)
        self.keys = AsyncKeys(core)
        self.webhooks = AsyncWebhooks(core)

    async def aclose(self) -> None:
        await self._core.aclose()

    async def __aenter__(self) -> "AsyncImageGen":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
