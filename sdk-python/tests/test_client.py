"""The HTTP core through the public client: retries, Retry-After, idempotency keys, typed errors, pagination."""

import asyncio

import httpx
import pytest
from helpers import async_client, body, client, envelope, generation

import imagegen


def test_retries_a_503_honouring_retry_after_with_the_same_idempotency_key(sleeps):
    seen: list[httpx.Request] = []

    def handler(request):
        seen.append(request)
        if len(seen) < 3:
            return httpx.Response(503, headers={"retry-after": "7"}, json={})
        return httpx.Response(200, json=generation(status="queued"))

    g = client(handler).generations.create(prompt="a red circle", steps=4)
    assert g.status == "queued" and g.request.model == "tiny-shapes"
    assert sleeps == [7.0, 7.0]
    keys = {r.headers["idempotency-key"] for r in seen}
    assert len(keys) == 1 and next(iter(keys))
    assert body(seen[0]) == {"prompt": "a red circle", "steps": 4}
    assert seen[0].headers["authorization"] == "Bearer ig_test_key_0123456789"


def test_gives_up_after_max_retries_with_a_typed_error(sleeps):
    calls = []

    def handler(request):
        calls.append(request)
        return envelope(429, "rate_limited", "slow down", "rate_limit_error")

    with pytest.raises(imagegen.RateLimitError) as err:
        client(handler, max_retries=1).models.list()
    assert len(calls) == 2 and err.value.status == 429 and err.value.code == "rate_limited"
    assert len(sleeps) == 1 and 0.375 <= sleeps[0] <= 0.625  # backoff with jitter when no Retry-After


def test_a_4xx_is_not_retried(sleeps):
    calls = []

    def handler(request):
        calls.append(request)
        return envelope(409, "conflict", "busy", "conflict_error")

    with pytest.raises(imagegen.ConflictError):
        client(handler).generations.cancel("gen_1")
    assert len(calls) == 1 and sleeps == []


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, imagegen.BadRequestError),
        (401, imagegen.AuthenticationError),
        (403, imagegen.PermissionDeniedError),
        (404, imagegen.NotFoundError),
        (422, imagegen.UnprocessableEntityError),
        (500, imagegen.InternalServerError),
    ],
)
def test_one_error_class_per_status(status, cls, sleeps):
    with pytest.raises(cls) as err:
        client(lambda r: envelope(status, "some_code", "it failed"), max_retries=0).models.get("m")
    assert err.value.status == status and err.value.code == "some_code" and err.value.request_id == "req_1"
    assert isinstance(err.value, imagegen.APIError)


def test_a_wrong_key_names_the_key_and_the_base_url():
    with pytest.raises(imagegen.AuthenticationError) as err:
        client(lambda r: envelope(401, "invalid_api_key", "Invalid API key", "authentication_error")).models.list()
    assert "ig_test_ke" in str(err.value) and "http://api.test" in str(err.value)
    assert "ig_test_key_0123456789" not in str(err.value)  # never the whole secret


def test_a_wrong_base_url_answering_something_else_names_the_url():
    with pytest.raises(imagegen.NotFoundError) as err:
        client(lambda r: httpx.Response(404, text="<html>nope</html>")).models.list()
    assert "http://api.test/v1/models" in str(err.value)


def test_an_unreachable_base_url_is_a_connection_error_naming_it(sleeps):
    def handler(request):
        raise httpx.ConnectError("connection refused")

    with pytest.raises(imagegen.APIConnectionError) as err:
        client(handler).models.list()
    assert "http://api.test" in str(err.value) and len(sleeps) == 2


def test_a_real_refused_connection():
    c = imagegen.ImageGen("k", base_url="http://127.0.0.1:9", max_retries=0)
    with pytest.raises(imagegen.APIConnectionError, match="127.0.0.1:9"):
        c.models.list()


def test_create_waits_on_the_server_with_prefer_wait():
    seen = []

    def handler(request):
        seen.append(request)
        return httpx.Response(200, json=generation())

    client(handler).generations.create(prompt="p", wait=30)
    assert seen[0].headers["prefer"] == "wait=30"
    assert seen[0].extensions["timeout"]["read"] == 90.0  # 60 s plus the wait


def test_create_and_wait_polls_until_done_and_raises_on_failure(sleeps):
    states = iter(["queued", "running", "failed"])

    def handler(request):
        g = generation(status=next(states))
        if g["status"] == "failed":
            g["error"] = {"code": "oom", "message": "out of memory"}
        return httpx.Response(200, json=g)

    with pytest.raises(imagegen.GenerationFailedError) as err:
        client(handler).generations.create_and_wait(prompt="p")
    assert err.value.code == "oom" and err.value.generation_id == "gen_1"


def test_iterate_follows_the_cursor():
    pages = {
        None: {"object": "list", "data": [generation("g3"), generation("g2")], "has_more": True, "next_cursor": "g2"},
        "g2": {"object": "list", "data": [generation("g1")], "has_more": False, "next_cursor": None},
    }
    seen = []

    def handler(request):
        seen.append(dict(request.url.params))
        return httpx.Response(200, json=pages[request.url.params.get("after")])

    ids = [g.id for g in client(handler).generations.iterate(status="succeeded")]
    assert ids == ["g3", "g2", "g1"]
    assert seen == [{"status": "succeeded"}, {"status": "succeeded", "after": "g2"}]


def test_the_async_client_retries_and_parses(sleeps):
    calls = []

    def handler(request):
        calls.append(request)
        if len(calls) == 1:
            return httpx.Response(429, headers={"retry-after": "2"}, json={})
        return httpx.Response(200, json={"object": "list", "data": [{"id": "m", "object": "model", "spec": {}}]})

    async def main():
        async with async_client(handler) as c:
            return await c.models.list()

    models = asyncio.run(main())
    assert [m.id for m in models] == ["m"] and sleeps == [2.0]


def test_no_key_is_refused_up_front(monkeypatch):
    monkeypatch.delenv("IMAGEGEN_API_KEY", raising=False)
    with pytest.raises(imagegen.ImageGenError, match="API key"):
        imagegen.ImageGen()
