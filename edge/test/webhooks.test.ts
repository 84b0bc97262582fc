import { env } from "cloudflare:workers";
import { beforeAll, describe, expect, it } from "vitest";
import { database, webhooksTable } from "@imagegen/db";
import { deliverDue } from "../src/webhooks/index.ts";
import { call, completeLeased, generate, lease, newRunner, newTenant, registerModel } from "./helpers.ts";

beforeAll(async () => {
  await registerModel();
});

const UNREACHABLE = "http://127.0.0.1:9/hook";

async function deliveries(key: string) {
  return (await call("GET", "/v1/webhooks/deliveries", { token: key })).body.data as any[];
}
async function until<T>(probe: () => Promise<T | undefined | false>): Promise<T> {
  for (let i = 0; i < 100; i++) {
    const v = await probe();
    if (v) return v;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error("timed out");
}

describe("webhooks", () => {
  it("a finished generation records a delivery; failures are retried with backoff, then given up", async () => {
    const t = await newTenant("hooks");
    const runner = await newRunner();
    const job = await generate(t.key, { webhook_url: UNREACHABLE });
    const l = await lease(runner.token);
    await completeLeased(runner.token, l.body);
    const first = await until(async () => (await deliveries(t.key)).find((d) => d.attempts === 1));
    expect(first).toMatchObject({ event: "generation.succeeded", url: UNREACHABLE, generation_id: job.body.id, status: "pending" });
    expect(first.last_error).toBeTruthy();
    const wait = Date.parse(first.next_attempt_at) - Date.now();
    expect(wait).toBeGreaterThan(5_000);
    expect(wait).toBeLessThan(11_000);

    const db = database(env.DB);
    let now = Date.now();
    for (let attempt = 2; attempt <= webhooksTable.MAX_DELIVERY_ATTEMPTS; attempt++) {
      now += 3 * 3_600_000; // past any backoff
      expect(await deliverDue(db, now)).toBe(1);
    }
    const last = (await deliveries(t.key)).find((d) => d.id === first.id);
    expect(last).toMatchObject({ status: "failed", attempts: webhooksTable.MAX_DELIVERY_ATTEMPTS, next_attempt_at: null });
    expect(await deliverDue(db, now + 86_400_000)).toBe(0);

    const again = await call("POST", `/v1/webhooks/deliveries/${first.id}/redeliver`, { token: t.key });
    expect(again.status).toBe(200);
    expect(again.body.attempts).toBe(webhooksTable.MAX_DELIVERY_ATTEMPTS + 1);
    const other = await newTenant("hooks-other");
    expect((await call("POST", `/v1/webhooks/deliveries/${first.id}/redeliver`, { token: other.key })).status).toBe(404);
    expect(await deliveries(other.key)).toEqual([]);
  });

  it("cancel and failure notify too; jobs without a webhook_url record nothing", async () => {
    const t = await newTenant("hooks-2");
    const runner = await newRunner();
    const canceled = await generate(t.key, { webhook_url: UNREACHABLE, seed: 1 });
    await call("POST", `/v1/generations/${canceled.body.id}/cancel`, { token: t.key });
    const failing = await generate(t.key, { webhook_url: UNREACHABLE, seed: 2 });
    const l = await lease(runner.token);
    expect(l.body.job.id).toBe(failing.body.id);
    await call("POST", `/internal/v1/jobs/${failing.body.id}/fail`, { token: runner.token, body: { lease_id: l.body.lease_id, error: { code: "bad", message: "no" } } });
    await generate(t.key, { seed: 3 });
    const events = await until(async () => {
      const d = await deliveries(t.key);
      return d.length === 2 && d;
    });
    expect(events.map((d) => `${d.generation_id}:${d.event}`).sort()).toEqual([`${canceled.body.id}:generation.canceled`, `${failing.body.id}:generation.failed`].sort());
  });

  it("the signing secret is the tenant's own and rotates", async () => {
    const a = await newTenant("secret-a");
    const b = await newTenant("secret-b");
    const sa = (await call("GET", "/v1/webhooks/secret", { token: a.key })).body.secret;
    expect(sa).toMatch(/^whsec_/);
    expect((await call("GET", "/v1/webhooks/secret", { token: a.key })).body.secret).toBe(sa);
    expect((await call("GET", "/v1/webhooks/secret", { token: b.key })).body.secret).not.toBe(sa);
    const rotated = (await call("POST", "/v1/webhooks/secret/rotate", { token: a.key })).body.secret;
    expect(rotated).not.toBe(sa);
    expect((await call("GET", "/v1/webhooks/secret", { token: a.key })).body.secret).toBe(rotated);
  });
});
