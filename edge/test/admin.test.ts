import { env } from "cloudflare:workers";
import { beforeAll, describe, expect, it } from "vitest";
import { ADMIN, call, generate, lease, leaseUnacked, newRunner, newTenant, registerModel } from "./helpers.ts";

beforeAll(async () => {
  await registerModel();
});

const runnerOf = async (id: string) =>
  (await call("GET", "/admin/v1/runners", { token: ADMIN })).body.data.find((r: { id: string }) => r.id === id);

describe("operator control of runners", () => {
  it("lists runners with their status, capacity, leases held, last seen and creation time", async () => {
    const t = await newTenant("admin-list");
    const runner = await newRunner("listed", 2);
    await registerModel("list-model");
    await generate(t.key, { model: "list-model" });
    expect((await lease(runner.token, { models: ["list-model"] })).status).toBe(200);
    const listed = await runnerOf(runner.id);
    expect(listed).toMatchObject({
      object: "runner",
      name: "listed",
      status: "active",
      capacity: 2,
      active_leases: 1,
      revoked_at: null,
      models: ["list-model"],
    });
    expect(Date.parse(listed.last_seen_at)).toBeGreaterThan(0);
    expect(Date.parse(listed.created_at)).toBeGreaterThan(0);
    expect(listed).not.toHaveProperty("token");
    expect((await call("GET", "/admin/v1/runners", { token: "nope" })).status).toBe(401);
  });

  it("a disabled runner is refused until enabled again", async () => {
    const runner = await newRunner("switched");
    // Used first, so this isolate holds the runner in its token cache: the operator's change must still apply at once.
    expect((await leaseUnacked(runner.token, { models: ["model-without-jobs"] })).status).toBe(204);
    const off = await call("POST", `/admin/v1/runners/${runner.id}/disable`, { token: ADMIN });
    expect(off.status).toBe(200);
    expect(off.body.status).toBe("disabled");
    const refused = await leaseUnacked(runner.token, { models: ["model-without-jobs"] });
    expect(refused.status).toBe(401);
    expect(refused.body.error.code).toBe("runner_disabled");
    expect((await call("POST", `/admin/v1/runners/${runner.id}/enable`, { token: ADMIN })).body.status).toBe("active");
    expect((await leaseUnacked(runner.token, { models: ["model-without-jobs"] })).status).toBe(204);
  });

  it("rotation issues a new token once and the old one dies at once", async () => {
    const runner = await newRunner("rotated");
    expect((await leaseUnacked(runner.token, { models: ["model-without-jobs"] })).status).toBe(204);
    const r = await call("POST", `/admin/v1/runners/${runner.id}/rotate`, { token: ADMIN });
    expect(r.status).toBe(200);
    expect(r.body.id).toBe(runner.id);
    expect(r.body.token).toMatch(/^igr_/);
    expect(r.body.token).not.toBe(runner.token);
    expect((await leaseUnacked(runner.token, { models: ["model-without-jobs"] })).status).toBe(401);
    expect((await leaseUnacked(r.body.token, { models: ["model-without-jobs"] })).status).toBe(204);
    expect((await runnerOf(runner.id)).token).toBeUndefined();
  });

  it("revocation is final: the token dies, the record stays, nothing brings it back", async () => {
    const runner = await newRunner("revoked");
    expect((await leaseUnacked(runner.token, { models: ["model-without-jobs"] })).status).toBe(204);
    const r = await call("DELETE", `/admin/v1/runners/${runner.id}`, { token: ADMIN });
    expect(r.status).toBe(200);
    expect(r.body.status).toBe("revoked");
    expect(Date.parse(r.body.revoked_at)).toBeGreaterThan(0);
    expect((await leaseUnacked(runner.token, { models: ["model-without-jobs"] })).status).toBe(401);
    expect((await call("DELETE", `/admin/v1/runners/${runner.id}`, { token: ADMIN })).status).toBe(200);
    for (const action of ["enable", "disable", "rotate"]) {
      const again = await call("POST", `/admin/v1/runners/${runner.id}/${action}`, { token: ADMIN });
      expect(again.status).toBe(409);
      expect(again.body.error.code).toBe("runner_revoked");
    }
    expect((await leaseUnacked(runner.token, { models: ["model-without-jobs"] })).status).toBe(401);
    expect((await runnerOf(runner.id)).status).toBe("revoked");
    expect((await call("POST", "/admin/v1/runners/run_missing/disable", { token: ADMIN })).status).toBe(404);
    expect((await call("DELETE", "/admin/v1/runners/run_missing", { token: ADMIN })).status).toBe(404);
  });
});

describe("runner capacity", () => {
  it("a runner holds at most its capacity in leases, however often it asks", async () => {
    const t = await newTenant("capacity", { max_concurrent_jobs: 50 });
    await registerModel("capacity-model");
    const runner = await newRunner("greedy", 2);
    for (let i = 0; i < 6; i++) await generate(t.key, { model: "capacity-model", seed: i });
    // It declares 20; the operator registered it for 2.
    const answers = await Promise.all(
      Array.from({ length: 20 }, () => lease(runner.token, { models: ["capacity-model"], capacity: 20 })),
    );
    expect(answers.filter((a) => a.status === 200)).toHaveLength(2);
    expect(answers.filter((a) => a.status !== 200 && a.status !== 204)).toEqual([]);
    const held = await env.DB.prepare("SELECT count(*) AS n FROM jobs WHERE lease_owner = ? AND status = 'running'")
      .bind(runner.id)
      .first<{ n: number }>();
    expect(held!.n).toBe(2);

    // A declared capacity lower than the registered one is the limit.
    const modest = await newRunner("modest", 8);
    expect((await lease(modest.token, { models: ["capacity-model"], capacity: 1 })).status).toBe(200);
    expect((await lease(modest.token, { models: ["capacity-model"], capacity: 1 })).status).toBe(204);

    // An expired lease no longer counts.
    await env.DB.prepare("UPDATE jobs SET lease_expires_at = ? WHERE lease_owner = ?")
      .bind(Date.now() - 1, runner.id)
      .run();
    expect((await lease(runner.token, { models: ["capacity-model"], capacity: 20 })).status).toBe(200);
  });
});
