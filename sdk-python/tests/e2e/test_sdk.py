"""The Python SDK against the real stack: generate (sync and async), models, upload a LoRA and use it, follow a
job's events, and the bad inputs (another tenant's stream, a wrong key, a wrong base URL)."""

import asyncio
from pathlib import Path

import httpx
import pytest

import imagegen

ROOT = Path(__file__).resolve().parents[3]
ROOT_LORA = "gpu-runner/models/tiny-shapes/addons/lora-pastel.safetensors"


@pytest.fixture(scope="module")
def client(stack):
    with imagegen.ImageGen(stack.api_key, base_url=stack.edge_url) as c:
        yield c


def test_models_list(client, stack):
    models = client.models.list()
    assert stack.default_model in [m.id for m in models]
    m = client.models.get(stack.default_model)
    assert m.spec["default_sampler"] in m.spec["samplers"]


def test_generate_sync(client, stack):
    g = client.generations.create_and_wait(model=stack.default_model, prompt="a large red circle", seed=3, steps=4)
    assert g.status == "succeeded" and len(g.images) == 1 and g.images[0].sha256
    png = httpx.get(g.images[0].url).content
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.generations.get(g.id).id == g.id
    assert g.id in [x.id for x in client.generations.list(limit=5).data]


def test_generate_async(stack):
    async def main():
        async with imagegen.AsyncImageGen(stack.api_key, base_url=stack.edge_url) as c:
            g = await c.generations.create_and_wait(model=stack.default_model, prompt="a small blue square", seed=4)
            signed = await c.generations.sign_image_url(g.id, 0, 120)
            return g, signed

    g, signed = asyncio.run(main())
    assert g.status == "succeeded" and signed.url.startswith("http")


def test_upload_a_lora_and_generate_with_it(client, stack):
    progress: list[tuple[int, int]] = []
    up = client.addons.upload(
        ROOT / ROOT_LORA,
        kind="lora",
        name="py-e2e-pastel",
        family="tiny-shapes",
        on_progress=lambda sent, total: progress.append((sent, total)),
    )
    assert up.version.status == "ready", up.version.rejection_reason
    size = (ROOT / ROOT_LORA).stat().st_size
    assert progress[-1] == (size, size)
    assert [v.version for v in client.addons.versions(up.addon.id)] == [up.version.version]
    assert up.addon.id in [a.id for a in client.addons.list()]
    g = client.generations.create_and_wait(
        model=stack.default_model, prompt="a red circle", seed=5, loras=[{"id": up.addon.id, "scale": 0.8}]
    )
    assert g.status == "succeeded" and g.request.loras[0].id == up.addon.id


def test_follow_a_jobs_events(client, stack):
    g = client.generations.create(model=stack.default_model, prompt="a green triangle", seed=6, steps=8)
    seen = list(client.generations.events(g.id))
    assert seen[-1].status == "succeeded" and seen[-1].id == g.id
    assert len(seen) >= 1 and all(e.id == g.id for e in seen)


def test_another_tenants_stream_is_not_found(client, stack):
    admin = httpx.Client(base_url=stack.edge_url, headers={"authorization": f"Bearer {stack.admin_token}"})
    tenant = admin.post("/admin/v1/tenants", json={"name": "py-other"}).json()["id"]
    key = admin.post(f"/admin/v1/tenants/{tenant}/keys", json={"name": "other"}).json()["secret"]
    g = client.generations.create(model=stack.default_model, prompt="a red circle", seed=7)
    other = imagegen.ImageGen(key, base_url=stack.edge_url)
    with pytest.raises(imagegen.NotFoundError):
        list(other.generations.events(g.id))
    with pytest.raises(imagegen.NotFoundError):
        other.generations.get(g.id)


def test_a_wrong_key_or_base_url_is_a_typed_error_naming_it(stack):
    with pytest.raises(imagegen.AuthenticationError) as err:
        imagegen.ImageGen("igk_wrong_key_123", base_url=stack.edge_url).models.list()
    assert "igk_wrong_" in str(err.value) and stack.edge_url in str(err.value)
    with pytest.raises(imagegen.APIConnectionError, match="127.0.0.1:9"):
        imagegen.ImageGen(stack.api_key, base_url="http://127.0.0.1:9", max_retries=0).models.list()
    with pytest.raises(imagegen.NotFoundError, match="/nope/v1/models"):
        imagegen.ImageGen(stack.api_key, base_url=stack.edge_url + "/nope").models.list()
