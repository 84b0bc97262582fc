"""Add-on upload: declare size and sha256, stream the file to the presigned URL with progress, finalize."""

import asyncio
import hashlib
from pathlib import Path

import httpx
from helpers import async_client, body, client

from imagegen._core import UploadSource

ADDON = {
    "id": "addon_1",
    "object": "addon",
    "kind": "lora",
    "name": "pastel",
    "family": "tiny-shapes",
    "visibility": "private",
    "latest_version": 1,
    "owned": True,
    "created_at": "2026-01-01T00:00:00.000Z",
}
VERSION = {"version": 1, "status": "pending", "rejection_reason": None, "size_bytes": None, "sha256": None}


def storage_and_api(data: bytes, seen: list[httpx.Request]):
    def handler(request: httpx.Request):
        seen.append(request)
        if request.url.path == "/v1/addons":
            upload = {"method": "PUT", "url": "http://store.test/bucket/k?sig=1", "headers": {"x-amz-meta-a": "1"}}
            return httpx.Response(200, json={"addon": ADDON, "version": VERSION, "upload": upload})
        if request.url.host == "store.test":
            assert request.read() == data
            return httpx.Response(200)
        return httpx.Response(200, json={**VERSION, "version": 2, "status": "ready", "sha256": "x"})

    return handler


def check(seen: list[httpx.Request], data: bytes) -> None:
    create, put, finalize = seen
    assert body(create) == {
        "kind": "lora",
        "name": "pastel",
        "family": "tiny-shapes",
        "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    assert put.method == "PUT" and put.headers["content-length"] == str(len(data))
    assert "transfer-encoding" not in put.headers and "authorization" not in put.headers  # the key stays home
    assert put.headers["x-amz-meta-a"] == "1"
    assert finalize.url.path == "/v1/addons/addon_1/versions/1/finalize"


def test_upload_from_a_path_with_progress(tmp_path: Path):
    data = bytes(range(256)) * 700  # several chunks
    path = tmp_path / "pastel.safetensors"
    path.write_bytes(data)
    seen: list[httpx.Request] = []
    progress: list[tuple[int, int]] = []
    result = client(storage_and_api(data, seen)).addons.upload(
        path, kind="lora", name="pastel", family="tiny-shapes", on_progress=lambda s, t: progress.append((s, t))
    )
    check(seen, data)
    assert result.version.status == "ready" and result.addon.latest_version == 2
    assert progress[-1] == (len(data), len(data)) and len(progress) == 3
    assert [s for s, _ in progress] == sorted(s for s, _ in progress)


def test_async_upload_from_bytes():
    data = b"\x00" * 1000
    seen: list[httpx.Request] = []

    async def main():
        return await async_client(storage_and_api(data, seen)).addons.upload(
            data, kind="lora", name="pastel", family="tiny-shapes"
        )

    assert asyncio.run(main()).version.status == "ready"
    check(seen, data)


def test_upload_source_hashes_a_file_object_and_rereads_it(tmp_path: Path):
    path = tmp_path / "f"
    path.write_bytes(b"abc" * 50_000)
    with path.open("rb") as f:
        src = UploadSource(f)
        assert src.size == 150_000 and src.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert b"".join(src.chunks(None)) == path.read_bytes()
