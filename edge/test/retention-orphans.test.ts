/**
 * The orphan sweep (cron): objects nothing references go once their grace has passed — a canceled job's uploads,
 * an earlier lease's images, the files of deleted add-ons and rejected versions — and nothing a job kept.
 */
import { env } from "cloudflare:workers";
import { beforeAll, describe, expect, it } from "vitest";
import { database } from "@imagegen/db";
import { addonUploadKey, objectStore } from "../src/storage/index.ts";
import { ADDON_SWEEP_GRACE_MS, OUTPUT_SWEEP_GRACE_MS, sweepOrphans } from "../src/storage/retention.ts";
import {
  call,
  completeLeased,
  generate,
  lease,
  newRunner,
  newTenant,
  registerAddon,
  registerModel,
  uploadOutputs,
} from "./helpers.ts";

beforeAll(async () => {
  await registerModel();
});

const sweep = (at: number) => sweepOrphans(objectStore(env), database(env.DB), at);
const stored = async (key: string) => (await env.BUCKET!.head(key)) !== null;

describe("orphan sweep", () => {
  it("a canceled job's uploads and an earlier lease's images go after the grace; the images a job kept stay", async () => {
    const t = await newTenant("sweep-jobs");
    const runner = await newRunner("sweep");
    const canceled = await generate(t.key);
    const l1 = await lease(runner.token);
    await uploadOutputs(l1.body);
    expect((await call("POST", `/v1/generations/${canceled.body.id}/cancel`, { token: t.key })).status).toBe(200);

    const kept = await generate(t.key);
    const l2 = await lease(runner.token);
    // An earlier lease's upload under the same job (a runner that lost its lease), then the lease that completed.
    const stray = l2.body.outputs[0].storage_key.replace(l2.body.lease_id, "lease_earlier");
    await env.BUCKET!.put(stray, new Uint8Array(4));
    await completeLeased(runner.token, l2.body);
    expect((await call("GET", `/v1/generations/${kept.body.id}`, { token: t.key })).body.status).toBe("succeeded");

    const now = Date.now();
    expect(await sweep(now)).toBe(0);
    expect(await stored(l1.body.outputs[0].storage_key)).toBe(true);
    expect(await sweep(now + OUTPUT_SWEEP_GRACE_MS + 1_000)).toBe(2);
    expect(await stored(l1.body.outputs[0].storage_key)).toBe(false);
    expect(await stored(stray)).toBe(false);
    expect(await stored(l2.body.outputs[0].storage_key)).toBe(true);
  });

  it("a deleted add-on's file goes after the grace (its runners' download URLs have expired)", async () => {
    const t = await newTenant("sweep-addons");
    const addon = await registerAddon(t.id, "doomed", {
      storage_key: `tenants/${t.id}/addons/doomed/v1`,
      status: "ready",
      sha256: "0".repeat(64),
      size_bytes: 4,
    });
    await env.BUCKET!.put(`tenants/${t.id}/addons/doomed/v1`, new Uint8Array(4));
    await env.BUCKET!.put(addonUploadKey(`tenants/${t.id}/addons/doomed/v1`), new Uint8Array(4));
    expect((await call("DELETE", `/v1/addons/${addon}`, { token: t.key })).status).toBeLessThan(300);
    const now = Date.now();
    await sweep(now);
    expect(await stored(`tenants/${t.id}/addons/doomed/v1`)).toBe(true);
    expect(await sweep(now + ADDON_SWEEP_GRACE_MS + 1_000)).toBeGreaterThanOrEqual(2);
    expect(await stored(`tenants/${t.id}/addons/doomed/v1`)).toBe(false);
    expect(await stored(addonUploadKey(`tenants/${t.id}/addons/doomed/v1`))).toBe(false);
  });
});
