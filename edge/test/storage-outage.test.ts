/**
 * A store that fails is not the job's fault: a runner hands the job back with `storage_unavailable` and the edge
 * requeues it without counting the attempt, however often; other retryable failures still use attempts up.
 */
import { beforeAll, describe, expect, it } from "vitest";
import { STORAGE_UNAVAILABLE } from "@imagegen/contracts";
import { call, generate, lease, newRunner, newTenant, registerModel } from "./helpers.ts";

beforeAll(async () => {
  await registerModel();
});

const fail = (token: string, id: string, leaseId: string, code: string, retryable = true) =>
  call("POST", `/internal/v1/jobs/${id}/fail`, {
    token,
    body: { lease_id: leaseId, error: { code, message: "storage answered 503" }, retryable },
  });

describe("storage outages", () => {
  it("storage_unavailable requeues without burning an attempt, past max_attempts; the heartbeat announces the lease TTL", async () => {
    const t = await newTenant("outage");
    const runner = await newRunner("outage");
    const job = await generate(t.key);
    // More hand-backs than MAX_JOB_ATTEMPTS (3): none counts.
    for (let i = 0; i < 5; i++) {
      const l = await lease(runner.token);
      expect(l.body.job.id).toBe(job.body.id);
      expect(l.body.job.attempt).toBe(1);
      expect((await fail(runner.token, job.body.id, l.body.lease_id, STORAGE_UNAVAILABLE)).body).toEqual({
        ok: true,
        status: "queued",
      });
    }
    const seen = await call("GET", `/v1/generations/${job.body.id}`, { token: t.key });
    expect(seen.body).toMatchObject({ status: "queued", attempts: 0 });

    const l = await lease(runner.token);
    const hb = await call("POST", `/internal/v1/jobs/${job.body.id}/heartbeat`, {
      token: runner.token,
      body: { lease_id: l.body.lease_id },
    });
    expect(hb.body.lease_ttl_ms).toBe(30_000);
    // Any other retryable code counts: the attempt acknowledged above is spent.
    expect((await fail(runner.token, job.body.id, l.body.lease_id, "runner_error")).body).toEqual({
      ok: true,
      status: "queued",
    });
    expect((await call("GET", `/v1/generations/${job.body.id}`, { token: t.key })).body.attempts).toBe(1);
  });

  it("storage_unavailable without retryable fails the job as any permanent failure does", async () => {
    const t = await newTenant("outage-final");
    const runner = await newRunner("outage-final");
    await generate(t.key);
    // Whichever queued job the lease hands out (another test's may still wait).
    const l = await lease(runner.token);
    expect((await fail(runner.token, l.body.job.id, l.body.lease_id, STORAGE_UNAVAILABLE, false)).body).toEqual({
      ok: true,
      status: "failed",
    });
  });
});
