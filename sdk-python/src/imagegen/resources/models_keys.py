"""Models (list, get), API keys (list, create, revoke) and webhook settings (signing secret, deliveries)."""

from __future__ import annotations

from typing import Unpack

from .._core import Call, RequestOptions
from ..types import ApiKey, CreatedApiKey, CreateKey, Model, WebhookDelivery, WebhookSecret
from ._base import AsyncResource, SyncResource, listing, one, seg


def _model(model_id: str) -> Call:
    return Call("GET", f"/v1/models/{seg(model_id)}", Model)


def _create_key(params: CreateKey) -> Call:
    return Call("POST", "/v1/keys", CreatedApiKey, body=params)


def _revoke_key(key_id: str) -> Call:
    return Call("DELETE", f"/v1/keys/{seg(key_id)}", ApiKey)


_SECRET = Call("GET", "/v1/webhooks/secret", WebhookSecret)
_ROTATE = Call("POST", "/v1/webhooks/secret/rotate", WebhookSecret)


def _redeliver(delivery_id: str) -> Call:
    return Call("POST", f"/v1/webhooks/deliveries/{seg(delivery_id)}/redeliver", WebhookDelivery)


class Models(SyncResource):
    def list(self, *, opts: RequestOptions | None = None) -> list[Model]:
        return self._run(listing("/v1/models", Model), opts)

    def get(self, model_id: str, *, opts: RequestOptions | None = None) -> Model:
        return self._run(one(_model(model_id)), opts)


class AsyncModels(AsyncResource):
    async def list(self, *, opts: RequestOptions | None = None) -> list[Model]:
        return await self._run(listing("/v1/models", Model), opts)

    async def get(self, model_id: str, *, opts: RequestOptions | None = None) -> Model:
        return await self._run(one(_model(model_id)), opts)


class Keys(SyncResource):
    def list(self, *, opts: RequestOptions | None = None) -> list[ApiKey]:
        return self._run(listing("/v1/keys", ApiKey), opts)

    def create(self, *, opts: RequestOptions | None = None, **params: Unpack[CreateKey]) -> CreatedApiKey:
        """The answer carries `secret`, shown this once."""
        return self._run(one(_create_key(params)), opts)

    def revoke(self, key_id: str, *, opts: RequestOptions | None = None) -> ApiKey:
        return self._run(one(_revoke_key(key_id)), opts)


class AsyncKeys(AsyncResource):
    async def list(self, *, opts: RequestOptions | None = None) -> list[ApiKey]:
        return await self._run(listing("/v1/keys", ApiKey), opts)

    async def create(self, *, opts: RequestOptions | None = None, **params: Unpack[CreateKey]) -> CreatedApiKey:
        return await self._run(one(_create_key(params)), opts)

    async def revoke(self, key_id: str, *, opts: RequestOptions | None = None) -> ApiKey:
        return await self._run(one(_revoke_key(key_id)), opts)


class Webhooks(SyncResource):
    def secret(self, *, opts: RequestOptions | None = None) -> WebhookSecret:
        """The secret that signs this tenant's deliveries (pass it to `imagegen.webhooks.verify`)."""
        return self._run(one(_SECRET), opts)

    def rotate_secret(self, *, opts: RequestOptions | None = None) -> WebhookSecret:
        return self._run(one(_ROTATE), opts)

    def deliveries(self, *, opts: RequestOptions | None = None) -> list[WebhookDelivery]:
        return self._run(listing("/v1/webhooks/deliveries", WebhookDelivery), opts)

    def redeliver(self, delivery_id: str, *, opts: RequestOptions | None = None) -> WebhookDelivery:
        return self._run(one(_redeliver(delivery_id)), opts)


class AsyncWebhooks(AsyncResource):
    async def secret(self, *, opts: RequestOptions | None = None) -> WebhookSecret:
        return await self._run(one(_SECRET), opts)

    async def rotate_secret(self, *, opts: RequestOptions | None = None) -> WebhookSecret:
        return await self._run(one(_ROTATE), opts)

    async def deliveries(self, *, opts: RequestOptions | None = None) -> list[WebhookDelivery]:
        return await self._run(listing("/v1/webhooks/deliveries", WebhookDelivery), opts)

    async def redeliver(self, delivery_id: str, *, opts: RequestOptions | None = None) -> WebhookDelivery:
        return await self._run(one(_redeliver(delivery_id)), opts)
