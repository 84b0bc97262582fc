import { createExecutionContext } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { database } from "@imagegen/db";
import { createApp } from "../src/app.ts";
import { objectStore, sealUpload } from "../src/storage/index.ts";
import { sweepRetention } from "../src/storage/retention.ts";
import { sha256Hex } from "../src/lib/crypto.ts";
import {
  call,
  completeLeased,
  generate,
  lease,
  newRunner,
  newTenant,
  registerAddon,
  registerModel,
} from "./helpers.ts";

beforeAll(async () => {
  await registerModel();
});

function signed(url: string) {
  const u = new URL(url);
  return {
    path: decodeURIComponent(u.pathname),
    expires: Number(u.searchParams.get("X-Amz-Expires")),
    signature: u.searchParams.get("X-Amz-Signature"),
    headers: u.searchParams.get("X-Amz-SignedHeaders"),
  };
}

describe("object storage through presigned URLs", () => {
  it("a lease names its outputs' keys and carries GETs for its add-ons; upload URLs are signed with each image's size and SHA-256 and expire with the lease", async () => {
    const t = await newTenant("storage");
    const addon = await registerAddon(t.id, "style", { sha256: "b".repeat(64), size_bytes: 10 });
    const runner = await newRunner();
    await generate(t.key, { n: 2, loras: [{ id: addon, scale: 0.5 }] });
    const l = await lease(runner.token);
    expect(l.body.outputs).toHaveLength(2);
    for (const out of l.body.outputs) {
      expect(out.storage_key).toBe(`tenants/${t.id}/outputs/${l.body.job.id}/${l.body.lease_id}/${out.index}.png`);
      expect(out).not.toHaveProperty("put_url");
    }
    const sha = (i: number) => `${i}`.repeat(64);
    const asked = await call("POST", `/internal/v1/jobs/${l.body.job.id}/outputs`, {
      token: runner.token,
      body: {
        lease_id: l.body.lease_id,
        images: l.body.outputs.map((o: any) => ({ index: o.index, sha256: sha(o.index), size_bytes: 100 + o.index })),
      },
    });
    expect(asked.status, JSON.stringify(asked.body)).toBe(200);
    for (const up of asked.body.uploads) {
      const s = signed(up.put_url);
      expect(up.storage_key).toBe(l.body.outputs[up.index].storage_key);
      expect(s.path).toBe(`/cdn-cgi/local/r2/s3/imagegen/${up.storage_key}`);
      expect(s.signature).toMatch(/^[0-9a-f]{64}$/);
      expect(s.headers).toBe("content-length;content-type;host;x-amz-checksum-sha256");
      expect(up.headers).toEqual({
        "content-type": "image/png",
        "x-amz-checksum-sha256": btoa(String.fromCharCode(...Array(32).fill(up.index * 0x11))),
      });
      // The lease's TTL (30 s here), not an hour: the URL dies with the lease.
      expect(s.expires).toBeGreaterThan(25);
      expect(s.expires).toBeLessThanOrEqual(30);
    }
    const tooMany = await call("POST", `/internal/v1/jobs/${l.body.job.id}/outputs`, {
      token: runner.token,
      body: { lease_id: l.body.lease_id, images: [{ index: 2, sha256: sha(2), size_bytes: 1 }] },
    });
    expect(tooMany.status).toBe(400);
    expect(l.body.addons).toEqual([
      expect.objectContaining({
        id: addon,
        version: 1,
        ref: `${addon}@1`,
        kind: "lora",
        sha256: "b".repeat(64),
        size_bytes: 10,
      }),
    ]);
    expect(signed(l.body.addons[0].get_url).path).toBe(`/cdn-cgi/local/r2/s3/imagegen/addons/${t.id}/style`);
  });

  it("complete is refused until the images are really in storage", async () => {
    const t = await newTenant("upload-first");
    const runner = await newRunner();
    const job = await generate(t.key);
    const l = await lease(runner.token);
    const body = {
      lease_id: l.body.lease_id,
      images: [
        {
          index: 0,
          storage_key: l.body.outputs[0].storage_key,
          width: 64,
          height: 64,
          seed: 1,
          sha256: "c".repeat(64),
          size_bytes: 99,
        },
      ],
    };
    const early = await call("POST", `/internal/v1/jobs/${job.body.id}/complete`, { token: runner.token, body });
    expect(early.status).toBe(400);
    expect(early.body.error.code).toBe("output_missing");
    const elsewhere = await call("POST", `/internal/v1/jobs/${job.body.id}/complete`, {
      token: runner.token,
      body: { ...body, images: [{ ...body.images[0], storage_key: `tenants/other/outputs/x/0.png` }] },
    });
    expect(elsewhere.status).toBe(400);
    expect((await completeLeased(runner.token, l.body)).status).toBe(200);
  });

  it("complete checks each image's SHA-256, not only its size: one flipped byte is refused", async () => {
    const t = await newTenant("flipped");
    const runner = await newRunner();
    const job = await generate(t.key);
    const l = await lease(runner.token);
    const key = l.body.outputs[0].storage_key;
    const png = new TextEncoder().encode("\x89PNG a real image, honestly");
    const sha256 = await sha256Hex(png);
    const flipped = png.slice();
    flipped[10]! ^= 0x01;
    // A store that kept no checksum (the S3 path): the edge reads the bytes.
    await env.BUCKET!.put(key, flipped, { httpMetadata: { contentType: "image/png" } });
    const body = {
      lease_id: l.body.lease_id,
      images: [{ index: 0, storage_key: key, width: 64, height: 64, seed: 1, sha256, size_bytes: png.byteLength }],
    };
    const refused = await call("POST", `/internal/v1/jobs/${job.body.id}/complete`, { token: runner.token, body });
    expect(refused.status).toBe(400);
    expect(refused.body.error.code).toBe("output_checksum_mismatch");
    // A store that verified a checksum on the PUT: its checksum is compared.
    await env.BUCKET!.put(key, flipped, {
      httpMetadata: { contentType: "image/png" },
      sha256: await sha256Hex(flipped),
    });
    expect(
      (await call("POST", `/internal/v1/jobs/${job.body.id}/complete`, { token: runner.token, body })).body.error.code,
    ).toBe("output_checksum_mismatch");
    await env.BUCKET!.put(key, png, { httpMetadata: { contentType: "image/png" } });
    expect(
      (await call("POST", `/internal/v1/jobs/${job.body.id}/complete`, { token: runner.token, body })).status,
    ).toBe(200);
    const seen = await call("GET", `/v1/generations/${job.body.id}`, { token: t.key });
    expect(seen.body.images[0].sha256).toBe(sha256);
  });

  it("finished images come with signed GET URLs of the requested TTL, re-signable by their tenant only", async () => {
    const a = await newTenant("owner");
    const b = await newTenant("stranger");
    const runner = await newRunner();
    const job = await generate(a.key, { output_ttl_seconds: 600 });
    const l = await lease(runner.token);
    await completeLeased(runner.token, l.body);
    const seen = await call("GET", `/v1/generations/${job.body.id}`, { token: a.key });
    const img = seen.body.images[0];
    expect(signed(img.url).expires).toBe(600);
    expect(signed(img.url).path).toBe(
      `/cdn-cgi/local/r2/s3/imagegen/tenants/${a.id}/outputs/${job.body.id}/${l.body.lease_id}/0.png`,
    );
    expect(Date.parse(img.url_expires_at) - Date.now()).toBeGreaterThan(590_000);
    const again = await call("POST", `/v1/generations/${job.body.id}/images/0/url`, {
      token: a.key,
      body: { expires_in_seconds: 120 },
    });
    expect(again.status).toBe(200);
    expect(signed(again.body.url).expires).toBe(120);
    const foreign = await call("POST", `/v1/generations/${job.body.id}/images/0/url`, { token: b.key, body: {} });
    expect(foreign.status).toBe(404);
    const noImage = await call("POST", `/v1/generations/${job.body.id}/images/5/url`, { token: a.key, body: {} });
    expect(noImage.status).toBe(404);
  });

  it("an add-on deleted while its job is queued fails the job clearly instead of running without it", async () => {
    const t = await newTenant("deleter");
    const runner = await newRunner();
    const addon = await registerAddon(t.id, "doomed");
    const job = await generate(t.key, { loras: [{ id: addon }] });
    const del = await call("DELETE", `/v1/addons/${addon}`, { token: t.key });
    expect(del.status).toBe(200);
    const other = await newTenant("not-owner");
    expect((await call("DELETE", `/v1/addons/${addon}`, { token: other.key })).status).toBe(404);
    const l = await lease(runner.token);
    expect(l.status).toBe(204);
    const seen = await call("GET", `/v1/generations/${job.body.id}`, { token: t.key });
    expect(seen.body.status).toBe("failed");
    expect(seen.body.error.code).toBe("addon_deleted");
    expect(seen.body.error.message).toContain(addon);
  });

  it("outputs past the tenant's retention are deleted from storage", async () => {
    const t = await newTenant("short-memory", { retention_days: 1 });
    const runner = await newRunner();
    const job = await generate(t.key);
    const l = await lease(runner.token);
    await completeLeased(runner.token, l.body);
    const key = l.body.outputs[0].storage_key;
    expect(await env.BUCKET!.head(key)).not.toBeNull();
    expect(await sweepRetention(objectStore(env), database(env.DB), Date.now())).toBe(0);
    expect(await sweepRetention(objectStore(env), database(env.DB), Date.now() + 2 * 86_400_000)).toBe(1);
    expect(await env.BUCKET!.head(key)).toBeNull();
    const seen = await call("GET", `/v1/generations/${job.body.id}`, { token: t.key });
    expect(seen.body.images).toHaveLength(0);
  });
});

describe("re-signing", () => {
  it("refuses an out-of-range lifetime with a 400, and signs for an hour without a body", async () => {
    const t = await newTenant("resign");
    const runner = await newRunner();
    const job = await generate(t.key);
    const l = await lease(runner.token);
    await completeLeased(runner.token, l.body);
    const bad = await call("POST", `/v1/generations/${job.body.id}/images/0/url`, {
      token: t.key,
      body: { expires_in_seconds: 10 },
    });
    expect(bad.status).toBe(400);
    expect(bad.body.error.param).toBe("expires_in_seconds");
    const plain = await call("POST", `/v1/generations/${job.body.id}/images/0/url`, { token: t.key });
    expect(plain.status).toBe(200);
    expect(new URL(plain.body.url).searchParams.get("X-Amz-Expires")).toBe("3600");
  });
});

/**
 * An S3-compatible store without the R2 binding (MinIO, AWS): the Worker reaches it only over HTTP. Here a small
 * S3 endpoint in front of the test bucket answers the calls the edge makes (GET, HEAD, DELETE).
 */
describe("an S3 store without the R2 binding", () => {
  const s3Env = { ...env, BUCKET: undefined };
  const bucketPath = `${new URL(env.S3_ENDPOINT!).pathname}/${env.S3_BUCKET}/`;
  const s3Calls: string[] = [];

  async function fakeS3(req: Request): Promise<Response> {
    const url = new URL(req.url);
    const key = decodeURIComponent(url.pathname.slice(bucketPath.length));
    s3Calls.push(`${req.method} ${key}`);
    if (req.method === "DELETE") {
      await env.BUCKET!.delete(key);
      return new Response(null, { status: 204 });
    }
    const copySource = req.headers.get("x-amz-copy-source");
    if (req.method === "PUT" && copySource) {
      expect(url.searchParams.get("X-Amz-SignedHeaders")).toContain("x-amz-copy-source");
      const from = await env.BUCKET!.get(decodeURIComponent(copySource).slice(`${env.S3_BUCKET}/`.length));
      if (!from) return new Response(`<Error><Code>NoSuchKey</Code></Error>`, { status: 404 });
      await env.BUCKET!.put(key, await from.arrayBuffer());
      s3Calls[s3Calls.length - 1] = `COPY ${key}`;
      return new Response(`<CopyObjectResult><ETag>"x"</ETag></CopyObjectResult>`, {
        headers: { "content-type": "application/xml" },
      });
    }
    const obj = await env.BUCKET!.get(key);
    if (!obj) {
      const missing = `<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchKey</Code><Message>No such key</Message></Error>`;
      return new Response(req.method === "HEAD" ? null : missing, {
        status: 404,
        headers: { "content-type": "application/xml" },
      });
    }
    const headers = {
      "content-length": String(obj.size),
      "content-type": obj.httpMetadata?.contentType ?? "application/octet-stream",
    };
    return new Response(req.method === "HEAD" ? null : obj.body, { headers });
  }

  const realFetch = globalThis.fetch;
  beforeAll(() => {
    expect(env.BUCKET).toBeDefined();
  });
  afterEach(() => {
    vi.restoreAllMocks();
    s3Calls.length = 0;
  });
  const serveS3 = () =>
    vi.spyOn(globalThis, "fetch").mockImplementation(async (input, init) => {
      const req = new Request(input, init);
      return req.url.startsWith(env.S3_ENDPOINT!) ? fakeS3(req) : realFetch(req);
    });

  it("reads, heads and deletes through the S3 API", async () => {
    serveS3();
    const store = objectStore(s3Env);
    const key = "tenants/s3/outputs/x/0.png";
    await env.BUCKET!.put(key, new Uint8Array([1, 2, 3]), { httpMetadata: { contentType: "image/png" } });
    expect(await store.head(key)).toEqual({ size: 3, contentType: "image/png" });
    expect(await store.get(key)).toEqual(new Uint8Array([1, 2, 3]));
    expect(await store.get("tenants/s3/missing")).toBeUndefined();
    await store.delete([key]);
    expect(await env.BUCKET!.head(key)).toBeNull();
    expect(await store.sha256("tenants/s3/missing")).toBeUndefined();
    expect(s3Calls).toEqual([
      `HEAD ${key}`,
      `GET ${key}`,
      "GET tenants/s3/missing",
      `DELETE ${key}`,
      "GET tenants/s3/missing",
    ]);
  });

  it("finalize seals an add-on upload by a server-side copy", async () => {
    serveS3();
    const store = objectStore(s3Env);
    await env.BUCKET!.put("tenants/s3/addons/a/v1.upload", new Uint8Array([4, 5, 6]));
    expect(await sealUpload(store, "tenants/s3/addons/a/v1")).toEqual({
      size: 3,
      contentType: "application/octet-stream",
    });
    expect(new Uint8Array(await (await env.BUCKET!.get("tenants/s3/addons/a/v1"))!.arrayBuffer())).toEqual(
      new Uint8Array([4, 5, 6]),
    );
    expect(await env.BUCKET!.head("tenants/s3/addons/a/v1.upload")).toBeNull();
    expect(await sealUpload(store, "tenants/s3/addons/b/v1")).toBeUndefined();
    expect(s3Calls).toEqual([
      "COPY tenants/s3/addons/a/v1",
      "DELETE tenants/s3/addons/a/v1.upload",
      "HEAD tenants/s3/addons/a/v1",
      "PUT tenants/s3/addons/b/v1",
      "HEAD tenants/s3/addons/b/v1",
    ]);
  });

  it("retention deletes the objects, not only the rows", async () => {
    const t = await newTenant("s3-retention", { retention_days: 1 });
    const runner = await newRunner();
    await generate(t.key);
    const l = await lease(runner.token);
    await completeLeased(runner.token, l.body);
    const key = l.body.outputs[0].storage_key;
    serveS3();
    expect(await sweepRetention(objectStore(s3Env), database(env.DB), Date.now() + 2 * 86_400_000)).toBe(1);
    expect(s3Calls).toEqual([`DELETE ${key}`]);
    expect(await env.BUCKET!.head(key)).toBeNull();
  });

  it("the OpenAI-compatible b64_json answer reads the image through it", async () => {
    await registerModel("s3-openai");
    const t = await newTenant("s3-openai");
    const runner = await newRunner();
    serveS3();
    const ctx = createExecutionContext();
    const asked = createApp().fetch(
      new Request("http://edge.test/v1/images/generations", {
        method: "POST",
        headers: { authorization: `Bearer ${t.key}`, "content-type": "application/json" },
        body: JSON.stringify({ model: "s3-openai", prompt: "a small blue square", response_format: "b64_json" }),
      }),
      s3Env,
      ctx,
    );
    const l = await lease(runner.token, { models: ["s3-openai"], wait_ms: 5000 });
    expect((await completeLeased(runner.token, l.body)).status).toBe(200);
    const res = await asked;
    const body = (await res.json()) as any;
    expect(res.status).toBe(200);
    const bytes = Uint8Array.from(atob(body.data[0].b64_json), (ch) => ch.charCodeAt(0));
    expect(new TextDecoder().decode(bytes)).toBe(`png ${l.body.outputs[0].storage_key}`);
    expect(s3Calls).toContain(`GET ${l.body.outputs[0].storage_key}`);
  });
});
