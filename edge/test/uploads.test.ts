import { env } from "cloudflare:workers";
import { beforeAll, describe, expect, it } from "vitest";
import { encodeSafetensors } from "../../gpu-runner/src/addons/safetensors.ts";
import { sha256Hex } from "../src/lib/crypto.ts";
import { call, generate, newTenant, registerModel } from "./helpers.ts";

beforeAll(async () => {
  await registerModel();
});

/** A kohya-format LoRA for the test model's targets (see TINY_SPEC). */
function kohyaLora(rank = 4, module = "lora_unet_down_blocks_0_attentions_0_to_q", inF = 8, outF = 8) {
  return encodeSafetensors({
    [`${module}.lora_down.weight`]: { shape: [rank, inF], data: new Float32Array(rank * inF).fill(0.01) },
    [`${module}.lora_up.weight`]: { shape: [outF, rank], data: new Float32Array(outF * rank).fill(0.02) },
    [`${module}.alpha`]: { shape: [], data: Float32Array.from([rank]) },
  });
}

async function startUpload(key: string, file: Uint8Array, patch: Record<string, unknown> = {}) {
  return call("POST", "/v1/addons", { token: key, body: { kind: "lora", name: "style", family: "tiny-shapes", size_bytes: file.byteLength, sha256: await sha256Hex(file), ...patch } });
}

/** What the tenant's PUT to the presigned URL leaves in the bucket (the real PUT is exercised end to end). */
async function put(storageUrl: string, bytes: Uint8Array) {
  const key = decodeURIComponent(new URL(storageUrl).pathname).replace(/^.*\/imagegen\//, "");
  await env.BUCKET!.put(key, bytes);
}

const finalize = (key: string, id: string, version: number) => call("POST", `/v1/addons/${id}/versions/${version}/finalize`, { token: key });

describe("add-on uploads", () => {
  it("create → presigned PUT of the declared size → finalize validates → ready and usable", async () => {
    const t = await newTenant("uploader");
    const file = kohyaLora();
    const up = await startUpload(t.key, file);
    expect(up.status, JSON.stringify(up.body)).toBe(201);
    expect(up.body.version).toMatchObject({ version: 1, status: "pending" });
    const url = new URL(up.body.upload.url);
    expect(url.searchParams.get("X-Amz-SignedHeaders")).toBe("content-length;content-type;host");
    expect(decodeURIComponent(url.pathname)).toContain(`/tenants/${t.id}/addons/${up.body.addon.id}/v1`);

    const early = await finalize(t.key, up.body.addon.id, 1);
    expect(early.status).toBe(409);
    expect(early.body.error.code).toBe("upload_missing");

    await put(up.body.upload.url, file);
    const done = await finalize(t.key, up.body.addon.id, 1);
    expect(done.status).toBe(200);
    expect(done.body.status).toBe("ready");
    expect(done.body.details).toMatchObject({ convention: "kohya", layers: 1, rank: 4, modules: ["down_blocks.0.attentions.0.to_q"] });
    const job = await generate(t.key, { loras: [{ id: up.body.addon.id, scale: 0.7 }] });
    expect(job.status).toBe(202);
    expect(job.body.request.loras[0]).toMatchObject({ id: up.body.addon.id, version: 1, sha256: await sha256Hex(file) });
  });

  it("rejects with a reason a person can act on", async () => {
    const t = await newTenant("rejects");
    const cases: Array<[string, Uint8Array, Uint8Array, RegExp]> = [
      ["truncated", kohyaLora(), kohyaLora().subarray(0, 100), /has 100 bytes but \d+ were declared/],
      ["other bytes", kohyaLora(), (() => { const f = kohyaLora(); f[f.length - 1] = f[f.length - 1]! ^ 0xff; return f; })(), /sha256 is [0-9a-f]{64}, not the declared/],
      ["not safetensors", new TextEncoder().encode("this is not a LoRA file at all"), new TextEncoder().encode("this is not a LoRA file at all"), /Not a valid safetensors file/],
      ["unknown layer", kohyaLora(4, "lora_unet_up_blocks_9_nothing"), kohyaLora(4, "lora_unet_up_blocks_9_nothing"), /'lora_unet_up_blocks_9_nothing\.lora_down\.weight' matches no LoRA target/],
      ["rank too high", kohyaLora(16), kohyaLora(16), /rank 16, above this model's maximum of 8/],
      ["wrong shape", kohyaLora(4, "lora_unet_mid_block_proj", 16, 5), kohyaLora(4, "lora_unet_mid_block_proj", 16, 5), /has 5 output features; module 'mid_block.proj' has 4/],
    ];
    for (const [name, declared, uploaded, reason] of cases) {
      const up = await startUpload(t.key, declared, { name: `bad-${name.replace(/ /g, "-")}` });
      await put(up.body.upload.url, uploaded);
      const r = await finalize(t.key, up.body.addon.id, 1);
      expect(r.body.status, name).toBe("rejected");
      expect(r.body.rejection_reason, name).toMatch(reason);
      const use = await generate(t.key, { loras: [{ id: up.body.addon.id }] });
      expect(use.status, name).toBe(404);
    }
  });

  it("a new version keeps the old one usable as id@version", async () => {
    const t = await newTenant("versions");
    const v1 = kohyaLora(2);
    const up1 = await startUpload(t.key, v1);
    await put(up1.body.upload.url, v1);
    await finalize(t.key, up1.body.addon.id, 1);
    const v2 = kohyaLora(4);
    const up2 = await startUpload(t.key, v2);
    expect(up2.body.addon.id).toBe(up1.body.addon.id);
    expect(up2.body.version.version).toBe(2);
    // Until v2 is ready, the bare id means v1.
    expect((await generate(t.key, { loras: [{ id: up1.body.addon.id }] })).body.request.loras[0].version).toBe(1);
    await put(up2.body.upload.url, v2);
    await finalize(t.key, up1.body.addon.id, 2);
    expect((await generate(t.key, { loras: [{ id: up1.body.addon.id }] })).body.request.loras[0].version).toBe(2);
    expect((await generate(t.key, { loras: [{ id: `${up1.body.addon.id}@1` }] })).body.request.loras[0].version).toBe(1);
    const versions = await call("GET", `/v1/addons/${up1.body.addon.id}/versions`, { token: t.key });
    expect(versions.body.data.map((v: any) => [v.version, v.status])).toEqual([[2, "ready"], [1, "ready"]]);
  });

  it("limits size and kind, and keeps other tenants out", async () => {
    const t = await newTenant("limits-up");
    const other = await newTenant("other-up");
    const big = await call("POST", "/v1/addons", { token: t.key, body: { kind: "lora", name: "huge", family: "tiny-shapes", size_bytes: 65 * 1024 * 1024, sha256: "a".repeat(64) } });
    expect(big.status).toBe(400);
    expect(big.body.error.code).toBe("addon_too_large");
    const file = kohyaLora();
    const up = await startUpload(t.key, file);
    await put(up.body.upload.url, file);
    expect((await finalize(other.key, up.body.addon.id, 1)).status).toBe(404);
    expect((await call("PATCH", `/v1/addons/${up.body.addon.id}`, { token: other.key, body: { visibility: "public" } })).status).toBe(404);
    expect((await finalize(t.key, up.body.addon.id, 1)).body.status).toBe("ready");
    expect((await generate(other.key, { loras: [{ id: up.body.addon.id }] })).status).toBe(404);
    const pub = await call("PATCH", `/v1/addons/${up.body.addon.id}`, { token: t.key, body: { visibility: "public" } });
    expect(pub.body.visibility).toBe("public");
    expect((await generate(other.key, { loras: [{ id: up.body.addon.id }] })).status).toBe(202);
  });
});
