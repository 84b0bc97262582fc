import type { Core, RequestOptions, WithRequestId } from "../core.ts";
import { APIConnectionError, APIError } from "../errors.ts";
import { PagePromise } from "../pagination.ts";
import type { Addon, AddonUpload, AddonVersion, CreateAddonParams, List } from "../types.ts";

/** How much of an upload's file has been handed to the network. */
export interface UploadProgress {
  loaded: number;
  total: number;
}

export interface UploadOptions extends RequestOptions {
  /** Called as the file goes out (every 64 KiB) and once at the end with `loaded === total`. */
  onProgress?: (progress: UploadProgress) => void;
}

const CHUNK = 64 * 1024;

async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** The file as a stream that reports each chunk as fetch pulls it, which is how far the upload has gone. */
function progressStream(
  file: Uint8Array,
  onProgress: (p: UploadProgress) => void,
): { body: ReadableStream<Uint8Array>; pulled: () => number } {
  let offset = 0;
  const body = new ReadableStream<Uint8Array>({
    pull(controller) {
      if (offset >= file.byteLength) return controller.close();
      const chunk = file.subarray(offset, offset + CHUNK);
      offset += chunk.byteLength;
      controller.enqueue(chunk);
      onProgress({ loaded: offset, total: file.byteLength });
    },
  });
  return { body, pulled: () => offset };
}

export class Addons {
  private readonly core: Core;
  constructor(core: Core) {
    this.core = core;
  }

  list(opts: RequestOptions = {}): PagePromise<List<Addon>> {
    return new PagePromise(async () => (await this.core.request<List<Addon>>("GET", "/v1/addons", opts)).data);
  }

  async get(id: string, opts: RequestOptions = {}): Promise<WithRequestId<Addon>> {
    return (await this.core.request<Addon>("GET", `/v1/addons/${encodeURIComponent(id)}`, opts)).data;
  }

  versions(id: string, opts: RequestOptions = {}): PagePromise<List<AddonVersion>> {
    return new PagePromise(
      async () =>
        (await this.core.request<List<AddonVersion>>("GET", `/v1/addons/${encodeURIComponent(id)}/versions`, opts))
          .data,
    );
  }

  /**
   * Uploads an add-on file in one call: declares its size and sha256, PUTs it to the presigned URL (through the
   * client's `fetch`, under its timeout, reporting `onProgress`), and finalizes. Resolves with the validated
   * version: `status` is "ready", or "rejected" with `rejection_reason`.
   */
  async upload(
    file: Uint8Array,
    params: Omit<CreateAddonParams, "size_bytes" | "sha256">,
    opts: UploadOptions = {},
  ): Promise<{ addon: Addon; version: WithRequestId<AddonVersion> }> {
    const { onProgress, ...request } = opts;
    const body = { ...params, size_bytes: file.byteLength, sha256: await sha256Hex(file) };
    const started = (await this.core.request<AddonUpload>("POST", "/v1/addons", { ...request, body })).data;
    await this.put(started.upload.url, file, started.upload.headers, request, onProgress);
    const path = `/v1/addons/${started.addon.id}/versions/${started.version.version}/finalize`;
    const version = (await this.core.request<AddonVersion>("POST", path, request)).data;
    return { addon: { ...started.addon, latest_version: version.version }, version };
  }

  private async put(
    url: string,
    file: Uint8Array,
    headers: Record<string, string>,
    opts: RequestOptions,
    onProgress?: (p: UploadProgress) => void,
  ): Promise<void> {
    const send = (body: BodyInit, extra: RequestInit = {}) =>
      this.core.send(
        url,
        { method: "PUT", body, headers: { ...headers, "content-length": String(file.byteLength) }, ...extra },
        opts,
      );
    let answer: Awaited<ReturnType<typeof send>>;
    if (onProgress) {
      const stream = progressStream(file, onProgress);
      try {
        answer = await send(stream.body, { duplex: "half" } as RequestInit);
      } catch (err) {
        // Runtimes without streamed request bodies (most browsers over HTTP/1.1) refuse before sending anything.
        if (!(err instanceof APIConnectionError) || stream.pulled() > 0) throw err;
        answer = await send(file as Uint8Array<ArrayBuffer>);
      }
    } else {
      answer = await send(file as Uint8Array<ArrayBuffer>);
    }
    const { res, release } = answer;
    try {
      if (!res.ok) {
        const error = {
          type: "storage_error",
          code: "upload_refused",
          message: `storage refused the upload: ${res.status}`,
          request_id: "",
        };
        throw new APIError(res.status, { error }, res.headers);
      }
      await res.body?.cancel();
    } finally {
      release();
    }
    onProgress?.({ loaded: file.byteLength, total: file.byteLength });
  }

  async setVisibility(
    id: string,
    visibility: Addon["visibility"],
    opts: RequestOptions = {},
  ): Promise<WithRequestId<Addon>> {
    return (
      await this.core.request<Addon>("PATCH", `/v1/addons/${encodeURIComponent(id)}`, { ...opts, body: { visibility } })
    ).data;
  }

  async delete(id: string, opts: RequestOptions = {}): Promise<WithRequestId<Addon>> {
    return (await this.core.request<Addon>("DELETE", `/v1/addons/${encodeURIComponent(id)}`, opts)).data;
  }
}
