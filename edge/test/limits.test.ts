import { beforeAll, describe, expect, it } from "vitest";
import { ADMIN, call, completeLeased, generate, lease, newRunner, newTenant, registerModel } from "./helpers.ts";

beforeAll(async () => {
  await registerModel();
});

describe("limits", () => {
  it("per-key rate limit: headers on every answer, 429 with Retry-After when exceeded", async () => {
    const t = await newTenant("rl", { rate_limit_per_minute: 5 });
    const answers = [];
    for (let i = 0; i < 7; i++) answers.push(await call("GET", "/v1/generations", { token: t.key }));
    for (const a of answers) {
      expect(a.headers.get("ratelimit-limit")).toBe("5");
      expect(a.headers.get("ratelimit-remaining")).toMatch(/^\d+$/);
      expect(a.headers.get("ratelimit-reset")).toMatch(/^\d+$/);
    }
    expect(answers.slice(0, 5).map((a) => a.status)).toEqual([200, 200, 200, 200, 200]);
    expect(answers[4]!.headers.get("ratelimit-remaining")).toBe("0");
    const limited = answers[5]!;
    expect(limited.status).toBe(429);
    expect(limited.body.error.type).toBe("rate_limit_error");
    expect(Number(limited.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
    // Another key of another tenant is unaffected.
    const u = await newTenant("rl-other", { rate_limit_per_minute: 5 });
    expect((await call("GET", "/v1/generations", { token: u.key })).status).toBe(200);
  });

  it("per-tenant cap on concurrent jobs frees up when a job ends", async () => {
    const t = await newTenant("cap", { max_concurrent_jobs: 2 });
    const j1 = await generate(t.key);
    const j2 = await generate(t.key);
    expect([j1.status, j2.status]).toEqual([202, 202]);
    const j3 = await generate(t.key);
    expect(j3.status).toBe(429);
    expect(j3.body.error.code).toBe("concurrency_limit_exceeded");
    expect(j3.headers.get("retry-after")).toBeTruthy();
    await call("POST", `/v1/generations/${j1.body.id}/cancel`, { token: t.key });
    const j4 = await generate(t.key);
    expect(j4.status).toBe(202);
  });

  it("concurrent creates cannot slip past the cap", async () => {
    const t = await newTenant("cap-race", { max_concurrent_jobs: 3 });
    const results = await Promise.all(Array.from({ length: 10 }, () => generate(t.key)));
    expect(results.filter((r) => r.status === 202)).toHaveLength(3);
    expect(results.filter((r) => r.status === 429)).toHaveLength(7);
  });

  it("per-tenant images per day, counted at creation", async () => {
    const t = await newTenant("daily", { max_images_per_day: 3 });
    const runner = await newRunner("daily-runner");
    const first = await generate(t.key, { n: 2 });
    expect(first.status).toBe(202);
    const l = await lease(runner.token);
    expect((await completeLeased(runner.token, l.body)).status).toBe(200);
    const second = await generate(t.key, { n: 2 });
    expect(second.status).toBe(429);
    expect(second.body.error.code).toBe("daily_image_quota_exceeded");
    const third = await generate(t.key, { n: 1 });
    expect(third.status).toBe(202);
  });

  it("limits are configurable per tenant by the admin", async () => {
    const t = await newTenant("tunable", { max_concurrent_jobs: 1 });
    expect((await generate(t.key)).status).toBe(202);
    expect((await generate(t.key)).status).toBe(429);
    const patch = await call("PATCH", `/admin/v1/tenants/${t.id}`, {
      token: "test-admin-token",
      body: { limits: { max_concurrent_jobs: 5 } },
    });
    expect(patch.status).toBe(200);
    expect(patch.body.limits.max_concurrent_jobs).toBe(5);
    expect((await generate(t.key)).status).toBe(202);
  });
  it("the rate limit is the tenant's: keys it mints share one budget", async () => {
    const t = await newTenant("rl-keys", { rate_limit_per_minute: 6 });
    const minted: string[] = [];
    for (let i = 0; i < 2; i++) {
      const k = await call("POST", "/v1/keys", { token: t.key, body: { name: `extra-${i}` } });
      expect(k.status).toBe(201);
      minted.push(k.body.secret);
    }
    // Two creates spent 2 of 6; three keys then get 4 more between them, not 6 each.
    const answers = await Promise.all(
      [t.key, ...minted].flatMap((key) =>
        Array.from({ length: 4 }, () => call("GET", "/v1/generations", { token: key })),
      ),
    );
    expect(answers.filter((a) => a.status === 200)).toHaveLength(4);
    expect(answers.filter((a) => a.status === 429)).toHaveLength(8);
    expect(answers.every((a) => a.headers.get("ratelimit-limit") === "6")).toBe(true);
  });

  it("a tenant holds at most max_api_keys live keys; revoking one frees a place", async () => {
    const t = await newTenant("key-cap", { max_api_keys: 3 });
    const made = [];
    for (let i = 0; i < 2; i++) made.push(await call("POST", "/v1/keys", { token: t.key, body: { name: `k${i}` } }));
    expect(made.map((m) => m.status)).toEqual([201, 201]);
    const over = await call("POST", "/v1/keys", { token: t.key, body: { name: "one-too-many" } });
    expect(over.status).toBe(403);
    expect(over.body.error.code).toBe("api_key_limit_exceeded");
    // The operator is held to the same cap, concurrent creates included.
    const admin = await Promise.all(
      Array.from({ length: 4 }, () => call("POST", `/admin/v1/tenants/${t.id}/keys`, { token: ADMIN, body: {} })),
    );
    expect(admin.every((a) => a.status === 403)).toBe(true);
    expect((await call("DELETE", `/v1/keys/${made[0]!.body.id}`, { token: t.key })).status).toBe(200);
    expect((await call("POST", "/v1/keys", { token: t.key, body: { name: "replacement" } })).status).toBe(201);
    const listed = await call("GET", "/v1/keys", { token: t.key });
    expect(listed.body.data.filter((k: any) => k.revoked_at === null)).toHaveLength(3);
    const tenant = (await call("GET", "/admin/v1/tenants", { token: ADMIN })).body.data.find((x: any) => x.id === t.id);
    expect(tenant.limits.max_api_keys).toBe(3);
  });
});
