import type { Core, RequestOptions } from "../core.ts";
import { APIError } from "../errors.ts";
import type { Addon, AddonUpload, AddonVersion, CreateAddonParams, List } from "../types.ts";

async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

export class Addons {
  private readonly core: Core;
  constructor(core: Core) {
    this.core = core;
  }

  async list(opts: RequestOptions = {}): Promise<List<Addon>> {
    return (await this.core.request<List<Addon>>("GET", "/v1/addons", opts)).data;
  }

  async get(id: string, opts: RequestOptions = {}): Promise<Addon> {
    return (await this.core.request<Addon>("GET", `/v1/addons/${encodeURIComponent(id)}`, opts)).data;
  }

  async versions(id: string, opts: RequestOptions = {}): Promise<List<AddonVersion>> {
    return (await this.core.request<List<AddonVersion>>("GET", `/v1/addons/${encodeURIComponent(id)}/versions`, opts)).data;
  }

  /**
   * Uploads an add-on file in one call: declares its size and sha256, PUTs it to the presigned URL, and finalizes.
   * Resolves with the validated version: `status` is "ready", or "rejected" with `rejection_reason`.
   */
  async upload(file: Uint8Array, params: Omit<CreateAddonParams, "size_bytes" | "sha256">, opts: RequestOptions = {}): Promise<{ addon: Addon; version: AddonVersion }> {
    const started = (
      await this.core.request<AddonUpload>("POST", "/v1/addons", { ...opts, body: { ...params, size_bytes: file.byteLength, sha256: await sha256Hex(file) } })
    ).data;
    const put = await fetch(started.upload.url, { method: "PUT", body: file as Uint8Array<ArrayBuffer>, headers: started.upload.headers });
    if (!put.ok) throw new APIError(put.status, { error: { type: "storage_error", code: "upload_refused", message: `storage refused the upload: ${put.status}`, request_id: "" } }, put.headers);
    const version = (
      await this.core.request<AddonVersion>("POST", `/v1/addons/${started.addon.id}/versions/${started.version.version}/finalize`, opts)
    ).data;
    return { addon: { ...started.addon, latest_version: version.version }, version };
  }

  async setVisibility(id: string, visibility: Addon["visibility"], opts: RequestOptions = {}): Promise<Addon> {
    return (await this.core.request<Addon>("PATCH", `/v1/addons/${encodeURIComponent(id)}`, { ...opts, body: { visibility } })).data;
  }

  async delete(id: string, opts: RequestOptions = {}): Promise<Addon> {
    return (await this.core.request<Addon>("DELETE", `/v1/addons/${encodeURIComponent(id)}`, opts)).data;
  }
}
