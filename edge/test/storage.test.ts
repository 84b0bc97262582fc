import { env } from "cloudflare:workers";
import { beforeAll, describe, expect, it } from "vitest";
import { database } from "@imagegen/db";
import { sweepRetention } from "../src/storage/retention.ts";
import { call, completeLeased, generate, lease, newRunner, newTenant, registerAddon, registerModel } from "./helpers.ts";

beforeAll(async () => {
  await registerModel();
});

function signed(url: string) {
  const u = new URL(url);
  return { path: decodeURIComponent(u.pathname), expires: Number(u.searchParams.get("X-Amz-Expires")), signature: u.searchParams.get("X-Amz-Signature"), headers: u.searchParams.get("X-Amz-SignedHeaders") };
}

describe("object storage through presigned URLs", () => {
  it("a lease carries presigned PUTs for exactly the job's outputs and GETs for its add-ons", async () => {
    const t = await newTenant("storage");
    const addon = await registerAddon(t.id, "style", { sha256: "b".repeat(64), size_bytes: 10 });
    const runner = await newRunner();
    await generate(t.key, { n: 2, loras: [{ id: addon, scale: 0.5 }] });
    const l = await lease(runner.token);
    expect(l.body.outputs).toHaveLength(2);
    for (const out of l.body.outputs) {
      const s = signed(out.put_url);
      expect(s.path).toBe(`/cdn-cgi/local/r2/s3/imagegen/${out.storage_key}`);
      expect(out.storage_key).toMatch(new RegExp(`^tenants/${t.id}/outputs/${l.body.job.id}/${out.index}\\.png$`));
      expect(s.signature).toMatch(/^[0-9a-f]{64}$/);
      expect(s.headers).toContain("content-type");
      expect(s.expires).toBe(3600);
    }
    expect(l.body.addons).toEqual([
      expect.objectContaining({ id: addon, version: 1, ref: `${addon}@1`, kind: "lora", sha256: "b".repeat(64), size_bytes: 10 }),
    ]);
    expect(signed(l.body.addons[0].get_url).path).toBe(`/cdn-cgi/local/r2/s3/imagegen/addons/${t.id}/style`);
  });

  it("complete is refused until the images are really in storage", async () => {
    const t = await newTenant("upload-first");
    const runner = await newRunner();
    const job = await generate(t.key);
    const l = await lease(runner.token);
    const body = { lease_id: l.body.lease_id, images: [{ index: 0, storage_key: l.body.outputs[0].storage_key, width: 64, height: 64, seed: 1, sha256: "c".repeat(64), size_bytes: 99 }] };
    const early = await call("POST", `/internal/v1/jobs/${job.body.id}/complete`, { token: runner.token, body });
    expect(early.status).toBe(400);
    expect(early.body.error.code).toBe("output_missing");
    const elsewhere = await call("POST", `/internal/v1/jobs/${job.body.id}/complete`, { token: runner.token, body: { ...body, images: [{ ...body.images[0], storage_key: `tenants/other/outputs/x/0.png` }] } });
    expect(elsewhere.status).toBe(400);
    expect((await completeLeased(runner.token, l.body)).status).toBe(200);
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
    expect(signed(img.url).path).toBe(`/cdn-cgi/local/r2/s3/imagegen/tenants/${a.id}/outputs/${job.body.id}/0.png`);
    expect(Date.parse(img.url_expires_at) - Date.now()).toBeGreaterThan(590_000);
    const again = await call("POST", `/v1/generations/${job.body.id}/images/0/url`, { token: a.key, body: { expires_in_seconds: 120 } });
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
    expect(await sweepRetention(env, database(env.DB), Date.now())).toBe(0);
    expect(await sweepRetention(env, database(env.DB), Date.now() + 2 * 86_400_000)).toBe(1);
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
    const bad = await call("POST", `/v1/generations/${job.body.id}/images/0/url`, { token: t.key, body: { expires_in_seconds: 10 } });
    expect(bad.status).toBe(400);
    expect(bad.body.error.param).toBe("expires_in_seconds");
    const plain = await call("POST", `/v1/generations/${job.body.id}/images/0/url`, { token: t.key });
    expect(plain.status).toBe(200);
    expect(new URL(plain.body.url).searchParams.get("X-Amz-Expires")).toBe("3600");
  });
});
