import { createHash } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodeSafetensors } from "@imagegen/formats/safetensors";
import { api, spawnRunner, startStack, waitFor, type Stack } from "./stack.ts";

let stack: Stack;

beforeAll(async () => {
  // No runners of the stack's own: each test starts the runners it needs. A short lease makes expiry quick.
  stack = await startStack({ runners: 0, env: { LEASE_TTL_MS: "3000" } });
});
afterAll(async () => {
  await stack?.stop();
});

const model = () => stack.defaultModel;

describe("faults", () => {
  it("a runner killed mid-job: the job is requeued and finishes on another runner, once", async () => {
    const doomed = await spawnRunner(stack, "doomed");
    const job = await api(stack, "POST", "/v1/generations", stack.apiKey, {
      model: model(),
      prompt: "a large red circle",
      sampler: "ddim",
      steps: 200,
      n: 4,
      seed: 5,
    });
    expect(job.status).toBe(202);
    // Killed mid-job, not between lease and acknowledgement: a lease the runner never acknowledged costs no attempt
    // (issue 20), so wait until the runner has acknowledged it and its attempt counts.
    await waitFor("the job to start", async () => {
      const r = (await api(stack, "GET", `/v1/generations/${job.body.id}`, stack.apiKey)).body;
      return r.status === "running" && r.attempts === 1;
    });
    doomed.kill("SIGKILL");
    const survivor = await spawnRunner(stack, "survivor");
    try {
      const done = await waitFor(
        "the job to finish",
        async () => {
          const r = await api(stack, "GET", `/v1/generations/${job.body.id}`, stack.apiKey);
          return ["succeeded", "failed"].includes(r.body.status) && r.body;
        },
        90_000,
      );
      expect(done.status).toBe("succeeded");
      expect(done.attempts).toBe(2);
      expect(done.images).toHaveLength(4);
      expect(survivor.output()).toContain(`"job.done","job":"${job.body.id}"`);
      expect(doomed.output()).not.toContain(`"job.done"`);
    } finally {
      survivor.kill("SIGTERM");
    }
  });

  it("an add-on upload through the real presigned URL: the store refuses a truncated body or another content type; finalize validates", async () => {
    const manifest = await api(stack, "GET", `/v1/models/${model()}`, stack.apiKey);
    const target = manifest.body.spec.lora_targets[0];
    const module = `lora_unet_${target.module.replace(/\./g, "_")}`;
    const file = encodeSafetensors({
      [`${module}.lora_down.weight`]: {
        shape: [2, target.in_features],
        data: new Float32Array(2 * target.in_features).fill(0.1),
      },
      [`${module}.lora_up.weight`]: {
        shape: [target.out_features, 2],
        data: new Float32Array(2 * target.out_features).fill(0.1),
      },
    });
    const sha256 = createHash("sha256").update(file).digest("hex");
    const up = await api(stack, "POST", "/v1/addons", stack.apiKey, {
      kind: "lora",
      name: "e2e-style",
      family: manifest.body.family,
      size_bytes: file.byteLength,
      sha256,
    });
    expect(up.status, JSON.stringify(up.body)).toBe(201);
    const put = (body: Uint8Array, type = "application/octet-stream") =>
      fetch(up.body.upload.url, { method: "PUT", body, headers: { "content-type": type } });
    expect((await put(file.subarray(0, file.byteLength - 10))).status).toBe(403);
    expect((await put(file, "text/plain")).status).toBe(403);
    expect(
      (await api(stack, "POST", `/v1/addons/${up.body.addon.id}/versions/1/finalize`, stack.apiKey)).body.error.code,
    ).toBe("upload_missing");
    expect((await put(file)).status).toBe(200);
    const fin = await api(stack, "POST", `/v1/addons/${up.body.addon.id}/versions/1/finalize`, stack.apiKey);
    expect(fin.body).toMatchObject({ status: "ready", details: { layers: 1, rank: 2 } });

    const bad = new TextEncoder().encode("definitely not safetensors");
    const up2 = await api(stack, "POST", "/v1/addons", stack.apiKey, {
      kind: "lora",
      name: "e2e-broken",
      family: manifest.body.family,
      size_bytes: bad.byteLength,
      sha256: createHash("sha256").update(bad).digest("hex"),
    });
    expect(
      (await fetch(up2.body.upload.url, { method: "PUT", body: bad, headers: up2.body.upload.headers })).status,
    ).toBe(200);
    const rejected = await api(stack, "POST", `/v1/addons/${up2.body.addon.id}/versions/1/finalize`, stack.apiKey);
    expect(rejected.body.status).toBe("rejected");
    expect(rejected.body.rejection_reason).toMatch(/Not a valid safetensors file/);
  });
});
