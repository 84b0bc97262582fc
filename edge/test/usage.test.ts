import { beforeAll, describe, expect, it } from "vitest";
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
import { type Person, as, newOwner } from "./session-helpers.ts";

let a: Awaited<ReturnType<typeof newTenant>>;
let b: Awaited<ReturnType<typeof newTenant>>;
let ownerA: Person;
let ownerB: Person;
let runner: Awaited<ReturnType<typeof newRunner>>;

beforeAll(async () => {
  await registerModel();
  a = await newTenant("usage-a");
  b = await newTenant("usage-b");
  ownerA = await newOwner(a.id, "owner@usage-a.example");
  ownerB = await newOwner(b.id, "owner@usage-b.example");
  runner = await newRunner();
});

/** Runs queued jobs to the end: `succeed` of them complete with their images, the rest fail. */
async function drain(succeed: number, fail: number) {
  for (let i = 0; i < succeed + fail; i++) {
    const leased = await lease(runner.token);
    expect(leased.status, JSON.stringify(leased.body)).toBe(200);
    const done =
      i < succeed
        ? await completeLeased(runner.token, leased.body)
        : await call("POST", `/internal/v1/jobs/${leased.body.job.id}/fail`, {
            token: runner.token,
            body: { lease_id: leased.body.lease_id, error: { code: "generation_failed", message: "test" } },
          });
    expect(done.status, JSON.stringify(done.body)).toBe(200);
  }
}

describe("usage", () => {
  it("counts generations, images and failures per day and per key, dashboard-made ones under 'dashboard'", async () => {
    expect((await generate(a.key, { n: 2 })).status).toBe(202);
    expect((await generate(a.key, { n: 1 })).status).toBe(202);
    const fromDashboard = await as(ownerA, "POST", "/v1/generations", { prompt: "a green triangle", n: 3 });
    expect(fromDashboard.status).toBe(202);
    await drain(2, 1); // the two key-made jobs succeed (3 images), the dashboard's fails

    const r = await as(ownerA, "GET", "/v1/usage");
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect(r.body.days).toHaveLength(30);
    const today = new Date().toISOString().slice(0, 10);
    expect(r.body.days.at(-1)).toEqual({ date: today, images: 3, generations: 3, failed: 1 });
    expect(r.body.days.slice(0, -1).every((d: any) => d.generations === 0)).toBe(true);
    expect(r.body.keys).toEqual([
      { key_id: a.keyId, key_name: "default", images: 3, generations: 2 },
      { key_id: null, key_name: "dashboard", images: 0, generations: 1 },
    ]);
    expect(Date.parse(r.body.since)).toBeLessThan(Date.parse(r.body.until));

    const week = await call("GET", "/v1/usage?days=7", { token: a.key });
    expect(week.body.days).toHaveLength(7);
    expect((await call("GET", "/v1/usage?days=0", { token: a.key })).status).toBe(400);
  });

  it("never shows another tenant's usage", async () => {
    const r = await as(ownerB, "GET", "/v1/usage");
    expect(r.body.days.every((d: any) => d.generations === 0 && d.images === 0)).toBe(true);
    expect(r.body.keys).toEqual([]);
  });
});

describe("warm add-ons", () => {
  it("lists what runners hold warm: own and public add-ons, never another tenant's private one", async () => {
    const privA = await registerAddon(a.id, "a-private");
    const pubA = await registerAddon(a.id, "a-public", { visibility: "public" });
    const privB = await registerAddon(b.id, "b-private");
    const warm = [`${privA}@1`, `${pubA}@1`, `${privB}@1`];
    const other = await newRunner("second");
    for (const r of [runner, other]) {
      const leased = await call("POST", "/internal/v1/lease", {
        token: r.token,
        body: { models: ["tiny-shapes"], wait_ms: 0, warm_addons: r === runner ? warm : [`${pubA}@1`] },
      });
      expect([200, 204]).toContain(leased.status);
    }
    const seenByA = await as(ownerA, "GET", "/v1/addons/warm");
    expect(seenByA.status, JSON.stringify(seenByA.body)).toBe(200);
    expect(seenByA.body.data).toEqual(
      expect.arrayContaining([
        { ref: `${privA}@1`, runners: 1 },
        { ref: `${pubA}@1`, runners: 2 },
      ]),
    );
    expect(seenByA.body.data.map((w: any) => w.ref)).not.toContain(`${privB}@1`);
    const seenByB = await call("GET", "/v1/addons/warm", { token: b.key });
    const refsB = seenByB.body.data.map((w: any) => w.ref).sort();
    expect(refsB).toEqual([`${privB}@1`, `${pubA}@1`].sort());
  });
});
