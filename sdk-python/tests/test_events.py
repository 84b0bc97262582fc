"""Server-sent events: parsing, and reconnection (with Last-Event-ID) when the stream drops before the end."""

import asyncio
import json

import httpx
import pytest
from helpers import async_client, client, envelope, generation

import imagegen
from imagegen._sse import SSEDecoder


def frame(g: dict, event_id: str | None = None) -> str:
    return (f"id: {event_id}\n" if event_id else "") + f"event: generation\ndata: {json.dumps(g)}\n\n"


def test_decoder_reads_fields_comments_and_multiline_data():
    d = SSEDecoder()
    events = [
        d.feed(line) for line in ["retry: 1500", ": keep-alive", "", "event: x", "id: 7", "data: a", "data: b", ""]
    ]
    (event,) = [e for e in events if e]
    assert (event.event, event.data, event.id, event.retry_ms) == ("x", "a\nb", "7", 1500)
    assert d.feed("data: y") is None and d.feed("").event == "message"


def test_events_reconnects_with_last_event_id_until_the_final_state(sleeps):
    connects: list[httpx.Request] = []

    def handler(request):
        connects.append(request)
        if len(connects) == 1:  # drops after one event
            text = ": keep-alive\n\n" + frame(generation(status="running", progress={"step": 1, "total": 4}), "e1")
            return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})
        text = frame(generation(status="running", progress={"step": 3, "total": 4}), "e2")
        text += frame(generation(status="succeeded"), "e3") + frame(generation(status="succeeded"), "e4")
        return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})

    seen = list(client(handler).generations.events("gen_1"))
    assert [(g.status, g.progress and g.progress.step) for g in seen] == [
        ("running", 1),
        ("running", 3),
        ("succeeded", None),
    ]
    assert "last-event-id" not in connects[0].headers and connects[1].headers["last-event-id"] == "e1"
    assert connects[0].headers["accept"] == "text/event-stream" and len(sleeps) == 1


def test_events_of_an_unknown_generation_is_a_not_found_error(sleeps):
    stream = client(lambda r: envelope(404, "not_found", "Generation 'x' not found", "not_found_error")).generations
    with pytest.raises(imagegen.NotFoundError):
        list(stream.events("x"))
    assert sleeps == []


def test_events_gives_up_after_max_reconnects(sleeps):
    def handler(request):
        raise httpx.ReadError("connection reset")

    with pytest.raises(imagegen.APIConnectionError, match="3 times"):
        list(client(handler).generations.events("gen_1", max_reconnects=2))
    assert len(sleeps) == 2


def test_async_events_reconnect_too(sleeps):
    calls = []

    def handler(request):
        calls.append(request)
        if len(calls) == 1:
            return httpx.Response(503, headers={"retry-after": "1"}, json={})
        return httpx.Response(200, text=frame(generation(status="canceled")))

    async def main():
        return [g.status async for g in async_client(handler).generations.events("gen_1")]

    assert asyncio.run(main()) == ["canceled"] and sleeps == [1.0]
