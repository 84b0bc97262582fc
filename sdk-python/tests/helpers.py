"""What the unit tests share: clients over httpx.MockTransport and canned answers."""

import json
from collections.abc import Callable

import httpx

import imagegen

Handler = Callable[[httpx.Request], httpx.Response]


def envelope(status: int, code: str, message: str, type_: str = "invalid_request_error") -> httpx.Response:
    body = {"error": {"type": type_, "code": code, "message": message, "request_id": "req_1"}}
    return httpx.Response(status, json=body)


def generation(gen_id: str = "gen_1", status: str = "succeeded", **extra) -> dict:
    return {
        "id": gen_id,
        "object": "generation",
        "status": status,
        "request": {"model": "tiny-shapes", "prompt": "p", "loras": [], "controlnets": [], "cache": {"mode": "off"}},
        "progress": None,
        "images": [],
        "error": None,
        "attempts": 1,
        "timings": None,
        "provenance": None,
        "created_at": "2026-01-01T00:00:00.000Z",
        "started_at": None,
        "finished_at": None,
        **extra,
    }


def client(handler: Handler, **kw) -> imagegen.ImageGen:
    http = httpx.Client(transport=httpx.MockTransport(handler))
    return imagegen.ImageGen("ig_test_key_0123456789", base_url="http://api.test", http_client=http, **kw)


def async_client(handler: Handler, **kw) -> imagegen.AsyncImageGen:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return imagegen.AsyncImageGen("ig_test_key_0123456789", base_url="http://api.test", http_client=http, **kw)


def body(request: httpx.Request) -> dict:
    return json.loads(request.content)
