import { env } from "cloudflare:workers";
import { beforeAll, describe, expect, it } from "vitest";
import { completeLeased, generate, lease, newRunner, newTenant, registerModel } from "./helpers.ts";

let key: string;
let tenantId: string;

beforeAll(async () => {
  await registerModel();
  ({ key, id: tenantId } = await newTenant("idem"));
});

const jobsOf = async () =>
  (await env.DB.prepare("SELECT count(*) AS n FROM jobs WHERE tenant_id = ?").bind(tenantId).first<{ n: number }>())!.n;

describe("Idempotency-Key", () => {
  it("the same key and body return the same job; another body is refused with 422", async () => {
    const first = await generate(key, { seed: 7 }, { "idempotency-key": "order-1" });
    expect(first.status).toBe(202);
    const again = await generate(key, { seed: 7 }, { "idempotency-key": "order-1" });
    expect(again.status).toBe(200);
    expect(again.body.id).toBe(first.body.id);
    expect(again.headers.get("idempotent-replayed")).toBe("true");
    const other = await generate(key, { seed: 8 }, { "idempotency-key": "order-1" });
    expect(other.status).toBe(422);
    expect(other.body.error.code).toBe("idempotency_key_reused");
    expect(await jobsOf()).toBe(1);
  });

  it("key order in the body does not matter; concurrent retries create one job", async () => {
    const body = { seed: 11, n: 2 };
    const results = await Promise.all(
      Array.from({ length: 12 }, (_, i) =>
        generate(key, i % 2 ? { n: 2, seed: 11 } : body, { "idempotency-key": "burst-1" }),
      ),
    );
    const ids = new Set(results.map((r) => r.body.id));
    expect(results.every((r) => r.status === 200 || r.status === 202)).toBe(true);
    expect(ids.size).toBe(1);
    expect(await jobsOf()).toBe(2);
  });

  it("the same key in another tenant is another job", async () => {
    const other = await newTenant("idem-other");
    const a = await generate(key, { seed: 7 }, { "idempotency-key": "order-1" });
    const b = await generate(other.key, { seed: 7 }, { "idempotency-key": "order-1" });
    expect(b.status).toBe(202);
    expect(b.body.id).not.toBe(a.body.id);
  });
  it("a replay with Prefer: wait waits for the job as the first request would have", async () => {
    await registerModel("idem-wait-model");
    const runner = await newRunner("idem-wait");
    const body = { model: "idem-wait-model", seed: 31 };
    const first = await generate(key, body, { "idempotency-key": "wait-1" });
    expect(first.status).toBe(202);
    const replay = generate(key, body, { "idempotency-key": "wait-1", prefer: "wait=10" });
    const l = await lease(runner.token, { models: ["idem-wait-model"], wait_ms: 5000 });
    expect((await completeLeased(runner.token, l.body)).status).toBe(200);
    const r = await replay;
    expect(r.status).toBe(200);
    expect(r.headers.get("idempotent-replayed")).toBe("true");
    expect(r.headers.get("preference-applied")).toBe("wait=10");
    expect(r.body.id).toBe(first.body.id);
    expect(r.body.status).toBe("succeeded");
  });
});
