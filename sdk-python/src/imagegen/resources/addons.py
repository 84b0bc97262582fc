"""Add-ons (LoRA files, ControlNet bundles as tar): upload in one call (declare size and sha256 → PUT to the
presigned URL with progress → finalize), or step by step; list, get, versions, update visibility, delete."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .._core import Call, FileSource, Flow, ProgressCallback, Put, RequestOptions, UploadSource
from ..types import Addon, AddonUpload, AddonVersion
from ._base import AsyncResource, SyncResource, listing, one, seg

Kind = Literal["lora", "controlnet"]
Visibility = Literal["private", "tenant", "public"]


@dataclass
class UploadResult:
    addon: Addon
    # `status` is "ready", or "rejected" with `rejection_reason`.
    version: AddonVersion


def _create(kind: Kind, name: str, family: str, size: int, sha256: str, visibility: Visibility | None) -> Call:
    body = {"kind": kind, "name": name, "family": family, "size_bytes": size, "sha256": sha256}
    if visibility:
        body["visibility"] = visibility
    return Call("POST", "/v1/addons", AddonUpload, body=body)


def _finalize(addon_id: str, version: int) -> Call:
    return Call("POST", f"/v1/addons/{seg(addon_id)}/versions/{seg(version)}/finalize", AddonVersion)


def _upload(
    file: FileSource,
    kind: Kind,
    name: str,
    family: str,
    visibility: Visibility | None,
    on_progress: ProgressCallback | None,
) -> Flow[UploadResult]:
    source = UploadSource(file)
    started: AddonUpload = yield _create(kind, name, family, source.size, source.sha256, visibility)
    yield Put(started.upload.url, started.upload.headers, source, on_progress)
    version: AddonVersion = yield _finalize(started.addon.id, started.version.version)
    started.addon.latest_version = version.version
    return UploadResult(started.addon, version)


def _get(addon_id: str) -> Call:
    return Call("GET", f"/v1/addons/{seg(addon_id)}", Addon)


def _update(addon_id: str, visibility: Visibility) -> Call:
    return Call("PATCH", f"/v1/addons/{seg(addon_id)}", Addon, body={"visibility": visibility})


def _delete(addon_id: str) -> Call:
    return Call("DELETE", f"/v1/addons/{seg(addon_id)}", Addon)


class Addons(SyncResource):
    def upload(
        self,
        file: FileSource,
        *,
        kind: Kind,
        name: str,
        family: str,
        visibility: Visibility | None = None,
        on_progress: ProgressCallback | None = None,
        opts: RequestOptions | None = None,
    ) -> UploadResult:
        """Uploads an add-on file (bytes, a path or a binary file) in one call; `on_progress(sent, total)` is
        called as the bytes go to storage. The result's version is "ready", or "rejected" with the reason."""
        return self._run(_upload(file, kind, name, family, visibility, on_progress), opts)

    def create(
        self,
        *,
        kind: Kind,
        name: str,
        family: str,
        size_bytes: int,
        sha256: str,
        visibility: Visibility | None = None,
        opts: RequestOptions | None = None,
    ) -> AddonUpload:
        """Declares a new version and returns where to PUT its bytes (then call `finalize`)."""
        return self._run(one(_create(kind, name, family, size_bytes, sha256, visibility)), opts)

    def finalize(self, addon_id: str, version: int, *, opts: RequestOptions | None = None) -> AddonVersion:
        return self._run(one(_finalize(addon_id, version)), opts)

    def list(self, *, opts: RequestOptions | None = None) -> list[Addon]:
        """This tenant's add-ons and the public ones."""
        return self._run(listing("/v1/addons", Addon), opts)

    def get(self, addon_id: str, *, opts: RequestOptions | None = None) -> Addon:
        return self._run(one(_get(addon_id)), opts)

    def versions(self, addon_id: str, *, opts: RequestOptions | None = None) -> list[AddonVersion]:
        return self._run(listing(f"/v1/addons/{seg(addon_id)}/versions", AddonVersion), opts)

    def update(self, addon_id: str, *, visibility: Visibility, opts: RequestOptions | None = None) -> Addon:
        return self._run(one(_update(addon_id, visibility)), opts)

    def delete(self, addon_id: str, *, opts: RequestOptions | None = None) -> Addon:
        return self._run(one(_delete(addon_id)), opts)


class AsyncAddons(AsyncResource):
    async def upload(
        self,
        file: FileSource,
        *,
        kind: Kind,
        name: str,
        family: str,
        visibility: Visibility | None = None,
        on_progress: ProgressCallback | None = None,
        opts: RequestOptions | None = None,
    ) -> UploadResult:
        return await self._run(_upload(file, kind, name, family, visibility, on_progress), opts)

    async def create(
        self,
        *,
        kind: Kind,
        name: str,
        family: str,
        size_bytes: int,
        sha256: str,
        visibility: Visibility | None = None,
        opts: RequestOptions | None = None,
    ) -> AddonUpload:
        return await self._run(one(_create(kind, name, family, size_bytes, sha256, visibility)), opts)

    async def finalize(self, addon_id: str, version: int, *, opts: RequestOptions | None = None) -> AddonVersion:
        return await self._run(one(_finalize(addon_id, version)), opts)

    async def list(self, *, opts: RequestOptions | None = None) -> list[Addon]:
        return await self._run(listing("/v1/addons", Addon), opts)

    async def get(self, addon_id: str, *, opts: RequestOptions | None = None) -> Addon:
        return await self._run(one(_get(addon_id)), opts)

    async def versions(self, addon_id: str, *, opts: RequestOptions | None = None) -> list[AddonVersion]:
        return await self._run(listing(f"/v1/addons/{seg(addon_id)}/versions", AddonVersion), opts)

    async def update(self, addon_id: str, *, visibility: Visibility, opts: RequestOptions | None = None) -> Addon:
        return await self._run(one(_update(addon_id, visibility)), opts)

    async def delete(self, addon_id: str, *, opts: RequestOptions | None = None) -> Addon:
        return await self._run(one(_delete(addon_id)), opts)
