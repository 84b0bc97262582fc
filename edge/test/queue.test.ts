import { env } from "cloudflare:workers";
import { doorbell, JOB_SHARDS, jobTopic, QUEUE_TOPIC, topicAddress } from "../src/dispatch/doorbell.ts";
import { beforeAll, describe, expect, it } from "vitest";
import {
  acknowledge,
  call,
  completeLeased,
  generate,
  uploadOutputs,
  lease,
  leaseUnacked,
  newRunner,
  newTenant,
  registerAddon,
  registerModel,
} from "./helpers.ts";

beforeAll(async () => {
  await registerModel();
});

const complete = async (token: string, leased: any, count?: number, leaseId = leased.lease_id) =>
  call("POST", `/internal/v1/jobs/${leased.job.id}/complete`, {
    token,
    body: { lease_id: leaseId, images: await uploadOutputs(leased, count), timings: { inference_ms: 120 } },
  });
const heartbeat = (token: string, id: string, body: Record<string, unknown>) =>
  call("POST", `/internal/v1/jobs/${id}/heartbeat`, { token, body });
const expireLease = (id: string) =>
  env.DB.prepare("UPDATE jobs SET lease_expires_at = ? WHERE id = ?")
    .bind(Date.now() - 1, id)
    .run();

describe("lease", () => {
  it("under many concurrent lease calls, every job is leased by exactly one runner", async () => {
    const t = await newTenant("hammer", { max_concurrent_jobs: 100 });
    const runners = await Promise.all([newRunner("r1"), newRunner("r2"), newRunner("r3"), newRunner("r4")]);
    const created = await Promise.all(Array.from({ length: 24 }, (_, i) => generate(t.key, { seed: i })));
    expect(created.every((r) => r.status === 202)).toBe(true);
    const answers = await Promise.all(Array.from({ length: 80 }, (_, i) => lease(runners[i % 4]!.token)));
    const leased = answers.filter((a) => a.status === 200);
    expect(answers.filter((a) => a.status !== 200 && a.status !== 204)).toEqual([]);
    const ids = leased.map((a) => a.body.job.id);
    expect(ids).toHaveLength(24);
    expect(new Set(ids).size).toBe(24);
    const rows = await env.DB.prepare(
      "SELECT count(*) AS n FROM jobs WHERE tenant_id = ? AND status = 'running' AND attempts = 1",
    )
      .bind(t.id)
      .first<{ n: number }>();
    expect(rows!.n).toBe(24);
  });

  it("an idle runner is woken by a new job instead of sleeping (queued → leased)", async () => {
    const t = await newTenant("latency");
    const runner = await newRunner("idle");
    const samples: number[] = [];
    const answered: number[] = [];
    for (let i = 0; i < 5; i++) {
      const waiting = lease(runner.token, { wait_ms: 5000 });
      await new Promise((r) => setTimeout(r, 50));
      const created = await generate(t.key, { seed: i });
      const createdAt = Date.parse(created.body.created_at);
      const got = await waiting;
      const leasedAt = Date.now();
      expect(got.status).toBe(200);
      expect(got.body.job.id).toBe(created.body.id);
      // queued_ms: from the insert to the lease UPDATE, measured by the edge; answered: until the runner has the
      // answer, presigned URLs included.
      samples.push(got.body.job.queued_ms);
      answered.push(leasedAt - createdAt);
      await complete(runner.token, got.body);
    }
    samples.sort((x, y) => x - y);
    answered.sort((x, y) => x - y);
    console.log(
      `queued → leased (idle runner, long poll), ms: ${samples.join(", ")}; median ${samples[2]}; answer received, median ${answered[2]} ms`,
    );
    // A sleeping poll would take up to wait_ms (5 s); the doorbell answers in milliseconds.
    expect(samples[2]).toBeLessThan(100);
  });

  it("answers 204 when nothing is queued within wait_ms", async () => {
    const runner = await newRunner("empty");
    const start = Date.now();
    const r = await lease(runner.token, { models: ["model-without-jobs"], wait_ms: 300 });
    expect(r.status).toBe(204);
    expect(Date.now() - start).toBeGreaterThanOrEqual(250);
  });

  it("prefers the runner's warm add-ons, but never past the affinity bound", async () => {
    const t = await newTenant("affinity", { max_concurrent_jobs: 50 });
    const addon = await registerAddon(t.id, "warm-style");
    const runner = await newRunner("warm");
    const plain = await generate(t.key, { seed: 1 });
    const styled = await generate(t.key, { seed: 2, loras: [{ id: addon }] });
    const got = await lease(runner.token, { warm_addons: [`${addon}@1`] });
    expect(got.body.job.id).toBe(styled.body.id);
    expect(got.body.job.request.loras[0].id).toBe(addon);
    await complete(runner.token, got.body);

    // An old plain job beats a fresh warm one once it has waited past AFFINITY_MAX_WAIT_MS.
    const old = await generate(t.key, { seed: 3 });
    await env.DB.prepare("UPDATE jobs SET created_at = ? WHERE id = ?")
      .bind(Date.now() - 60_000, old.body.id)
      .run();
    await env.DB.prepare("UPDATE jobs SET status = 'canceled' WHERE id = ?").bind(plain.body.id).run();
    await generate(t.key, { seed: 4, loras: [{ id: addon }] });
    const next = await lease(runner.token, { warm_addons: [`${addon}@1`] });
    expect(next.body.job.id).toBe(old.body.id);
  });

  it("is fair across tenants: a burst from one tenant does not starve another", async () => {
    const burst = await newTenant("burst", { max_concurrent_jobs: 100 });
    const quiet = await newTenant("quiet");
    const runner = await newRunner("fair");
    for (let i = 0; i < 15; i++) await generate(burst.key, { seed: i });
    const lone = await generate(quiet.key);
    const first = await lease(runner.token);
    const second = await lease(runner.token);
    expect([first.body.job.tenant_id, second.body.job.tenant_id]).toContain(quiet.id);
    expect([first.body.job.id, second.body.job.id]).toContain(lone.body.id);
  });
});

describe("leasing several jobs in one call (max_jobs)", () => {
  it("leases up to max_jobs in one D1 round trip, each with its own lease, fair across tenants", async () => {
    await registerModel("many-model");
    const burst = await newTenant("many-burst", { max_concurrent_jobs: 100 });
    const quiet = await newTenant("many-quiet");
    const runner = await newRunner("many");
    const burstJobs = [];
    for (let i = 0; i < 6; i++) burstJobs.push((await generate(burst.key, { model: "many-model", seed: i })).body.id);
    const lone = (await generate(quiet.key, { model: "many-model" })).body.id;
    // The runner's row is read once, then cached: the next call's D1 count is the lease alone.
    expect((await leaseUnacked(runner.token, { models: ["nothing-here"] })).status).toBe(204);
    const got = await leaseUnacked(runner.token, { models: ["many-model"], max_jobs: 4 });
    expect(got.status).toBe(200);
    const jobs = got.body.jobs as any[];
    expect(jobs).toHaveLength(4);
    expect(new Set(jobs.map((j) => j.lease_id)).size).toBe(4);
    expect(new Set(jobs.map((j) => j.job.id)).size).toBe(4);
    // Each lease sees the ones before it: the quiet tenant's job is not left behind the burst.
    expect(jobs.map((j) => j.job.id)).toContain(lone);
    expect(Number(got.headers.get("server-timing")?.match(/d1;dur=[\d.]+;desc="(\d+)x"/)?.[1])).toBe(1);
    // Each is a lease of its own: acknowledged, uploaded and completed one by one.
    for (const j of jobs) {
      expect((await acknowledge(runner.token, j)).status).toBe(200);
      expect((await complete(runner.token, j)).status).toBe(200);
    }
    // Three left; asking for ten gets those three, not an error.
    const rest = await leaseUnacked(runner.token, { models: ["many-model"], max_jobs: 10 });
    expect(rest.body.jobs.map((j: any) => j.job.id).sort()).toEqual(
      burstJobs.filter((id) => !jobs.some((j) => j.job.id === id)).sort(),
    );
  });

  it("never takes the runner past its capacity, and answers a single job without max_jobs", async () => {
    await registerModel("cap-model");
    const t = await newTenant("many-cap", { max_concurrent_jobs: 100 });
    const runner = await newRunner("many-cap");
    for (let i = 0; i < 5; i++) await generate(t.key, { model: "cap-model", seed: i });
    const first = await leaseUnacked(runner.token, { models: ["cap-model"], max_jobs: 8, capacity: 3 });
    expect(first.body.jobs).toHaveLength(3);
    // At capacity: nothing more, however many are asked for.
    expect((await leaseUnacked(runner.token, { models: ["cap-model"], max_jobs: 8, capacity: 3 })).status).toBe(204);
    const single = await leaseUnacked(runner.token, { models: ["cap-model"], capacity: 4 });
    expect(single.status).toBe(200);
    expect(single.body.jobs).toBeUndefined();
    expect(single.body.job.request.model).toBe("cap-model");
    const bad = await leaseUnacked(runner.token, { models: ["cap-model"], max_jobs: 0 });
    expect(bad.status).toBe(400);
  });

  it("a job whose add-on was deleted fails clearly and the others are still leased", async () => {
    await registerModel("gone-addon-model");
    const t = await newTenant("many-gone", { max_concurrent_jobs: 100 });
    const addon = await registerAddon(t.id, "soon-gone");
    const runner = await newRunner("many-gone");
    const doomed = await generate(t.key, { model: "gone-addon-model", loras: [{ id: addon }] });
    const plain = await generate(t.key, { model: "gone-addon-model", seed: 2 });
    await env.DB.prepare("UPDATE addons SET deleted_at = ? WHERE id = ?").bind(Date.now(), addon).run();
    const got = await leaseUnacked(runner.token, { models: ["gone-addon-model"], max_jobs: 4 });
    expect(got.body.jobs.map((j: any) => j.job.id)).toEqual([plain.body.id]);
    const failed = await call("GET", `/v1/generations/${doomed.body.id}`, { token: t.key });
    expect(failed.body).toMatchObject({ status: "failed", error: { code: "addon_deleted" } });
  });
});

describe("leases to runners that have gone", () => {
  const jobRow = (id: string) =>
    env.DB.prepare("SELECT status, attempts, lease_owner, lease_expires_at FROM jobs WHERE id = ?")
      .bind(id)
      .first<any>();

  it("a lease nobody acknowledges costs no attempt: runners that vanished never fail a job", async () => {
    const t = await newTenant("vanished");
    await registerModel("vanish-model");
    const gone = await newRunner("gone");
    const job = await generate(t.key, { model: "vanish-model" });
    // More vanished runners than the job has attempts (MAX_JOB_ATTEMPTS 3).
    for (let i = 0; i < 4; i++) {
      const l = await leaseUnacked(gone.token, { models: ["vanish-model"] });
      expect(l.status).toBe(200);
      expect(l.body.job.attempt).toBe(1);
      // Provisional: the short acknowledgement deadline, not a whole lease TTL (30 s here).
      expect(Date.parse(l.body.lease_expires_at) - Date.now()).toBeLessThanOrEqual(10_000);
      expect((await jobRow(job.body.id)).attempts).toBe(0);
      await expireLease(job.body.id);
    }
    const alive = await newRunner("alive-after");
    const l = await leaseUnacked(alive.token, { models: ["vanish-model"] });
    expect(l.body.job.id).toBe(job.body.id);
    const ack = await acknowledge(alive.token, l.body);
    expect(ack.status).toBe(200);
    expect(Date.parse(ack.body.lease_expires_at) - Date.now()).toBeGreaterThan(20_000);
    expect(await jobRow(job.body.id)).toMatchObject({ status: "running", attempts: 1 });
    expect((await complete(alive.token, l.body)).status).toBe(200);
  });

  it("a job handed back before it was acknowledged (a runner stopping as it arrived) costs no attempt", async () => {
    const t = await newTenant("handed-back");
    await registerModel("handback-model");
    const stopping = await newRunner("stopping");
    const job = await generate(t.key, { model: "handback-model" });
    const l = await leaseUnacked(stopping.token, { models: ["handback-model"] });
    const back = await call("POST", `/internal/v1/jobs/${job.body.id}/fail`, {
      token: stopping.token,
      body: { lease_id: l.body.lease_id, error: { code: "runner_shutdown", message: "stopping" }, retryable: true },
    });
    expect(back.body).toEqual({ ok: true, status: "queued" });
    const next = await lease(stopping.token, { models: ["handback-model"] });
    expect(next.body.job).toMatchObject({ id: job.body.id, attempt: 1 });
    expect((await jobRow(job.body.id)).attempts).toBe(1);
  });

  // Guards the hang-up path (workerd cancels a long poll whose caller went away, and the handler checks the request's
  // signal where `enable_request_signal` fires it); the acknowledgement above is what makes a missed hang-up harmless.
  it("a lease acknowledged in the lease request counts its attempt at once and runs the full TTL", async () => {
    const t = await newTenant("ack-in-lease");
    await registerModel("ack-lease-model");
    const runner = await newRunner("ack-in-lease");
    const job = await generate(t.key, { model: "ack-lease-model" });
    const l = await leaseUnacked(runner.token, { models: ["ack-lease-model"], acknowledge: true });
    expect(l.status).toBe(200);
    expect(l.body).toMatchObject({ acknowledged: true, lease_ttl_ms: 30_000 });
    expect(l.body.job).toMatchObject({ id: job.body.id, attempt: 1 });
    // Not the short acknowledgement deadline: the whole TTL, with no heartbeat.
    expect(Date.parse(l.body.lease_expires_at) - Date.now()).toBeGreaterThan(20_000);
    expect(await jobRow(job.body.id)).toMatchObject({ status: "running", attempts: 1 });
    const shown = await call("GET", `/v1/generations/${job.body.id}`, { token: t.key });
    expect(shown.body.started_at).not.toBeNull();
    // A later heartbeat extends it without counting another attempt; complete needs no acknowledgement.
    expect((await acknowledge(runner.token, l.body)).status).toBe(200);
    expect((await jobRow(job.body.id)).attempts).toBe(1);
    expect((await complete(runner.token, l.body)).status).toBe(200);
    expect(await jobRow(job.body.id)).toMatchObject({ status: "succeeded", attempts: 1 });
    // Without the flag the lease stays provisional, as before.
    const next = await generate(t.key, { model: "ack-lease-model" });
    const plain = await leaseUnacked(runner.token, { models: ["ack-lease-model"] });
    expect(plain.body.acknowledged).toBeUndefined();
    expect((await jobRow(next.body.id)).attempts).toBe(0);
  });

  it("a runner that hung up its long poll is not handed the next job", async () => {
    const t = await newTenant("hung-up");
    await registerModel("hangup-model");
    const runner = await newRunner("hung-up");
    const hangUp = new AbortController();
    const poll = call("POST", "/internal/v1/lease", {
      token: runner.token,
      body: { models: ["hangup-model"], wait_ms: 5_000 },
      signal: hangUp.signal,
    }).catch((e) => e);
    await new Promise((r) => setTimeout(r, 300));
    hangUp.abort();
    await poll;
    await new Promise((r) => setTimeout(r, 100));
    const job = await generate(t.key, { model: "hangup-model" });
    await new Promise((r) => setTimeout(r, 300));
    expect((await jobRow(job.body.id)).status).toBe("queued");
  });
});

describe("heartbeat, complete, fail", () => {
  it("heartbeat extends the lease and carries progress; cancel reaches the runner; completing after cancel fails", async () => {
    const t = await newTenant("hb");
    const runner = await newRunner("hb");
    const job = await generate(t.key);
    const l = await lease(runner.token);
    const before = Date.parse(l.body.lease_expires_at);
    await new Promise((r) => setTimeout(r, 20));
    const hb = await heartbeat(runner.token, job.body.id, {
      lease_id: l.body.lease_id,
      progress: { step: 2, total: 4 },
    });
    expect(hb.status).toBe(200);
    expect(hb.body.cancel).toBe(false);
    expect(Date.parse(hb.body.lease_expires_at)).toBeGreaterThan(before);
    const seen = await call("GET", `/v1/generations/${job.body.id}`, { token: t.key });
    expect(seen.body.status).toBe("running");
    expect(seen.body.progress).toEqual({ step: 2, total: 4 });

    const cancel = await call("POST", `/v1/generations/${job.body.id}/cancel`, { token: t.key });
    expect(cancel.body.status).toBe("canceled");
    const hb2 = await heartbeat(runner.token, job.body.id, { lease_id: l.body.lease_id });
    expect(hb2.body.cancel).toBe(true);
    const done = await complete(runner.token, l.body);
    expect(done.status).toBe(409);
    expect(done.body.error.code).toBe("job_canceled");
  });

  it("complete is idempotent: a repeat changes nothing and a job is never completed twice", async () => {
    const t = await newTenant("complete");
    const runner = await newRunner("c1");
    const intruder = await newRunner("c2");
    const job = await generate(t.key, { n: 2 });
    const l = await lease(runner.token);
    const stranger = await complete(intruder.token, l.body, 2);
    expect(stranger.status).toBe(409);
    expect(stranger.body.error.code).toBe("lease_lost");
    const wrongLease = await complete(runner.token, l.body, 2, "lease_forged");
    expect(wrongLease.status).toBe(409);
    const tooFew = await complete(runner.token, l.body, 1);
    expect(tooFew.status).toBe(400);

    const [a, b] = await Promise.all([complete(runner.token, l.body, 2), complete(runner.token, l.body, 2)]);
    expect(a.status).toBe(200);
    expect(b.status).toBe(200);
    const again = await complete(runner.token, l.body, 2);
    expect(again.status).toBe(200);
    // An acknowledgement, not the public job: a runner has no use for signed image URLs.
    expect(again.body).toEqual({ ok: true, status: "succeeded" });
    const images = await env.DB.prepare("SELECT count(*) AS n FROM images WHERE job_id = ?")
      .bind(job.body.id)
      .first<{ n: number }>();
    expect(images!.n).toBe(2);
    const usage = await env.DB.prepare("SELECT inference_ms FROM usage_counters WHERE tenant_id = ?")
      .bind(t.id)
      .first<{ inference_ms: number }>();
    expect(usage!.inference_ms).toBe(120);
    const seen = await call("GET", `/v1/generations/${job.body.id}`, { token: t.key });
    expect(seen.body.status).toBe("succeeded");
    expect(seen.body.images).toHaveLength(2);
    expect(seen.body.timings.inference_ms).toBe(120);
    expect(seen.body.timings.queue_ms).toBeGreaterThanOrEqual(0);
    expect(seen.body.provenance.runner).toBe(runner.id);
  });

  it("complete refuses images under another lease's or tenant's keys, or a wrong count, and stores none of them", async () => {
    const t = await newTenant("keys");
    const other = await newTenant("keys-other");
    await registerModel("keys-model");
    const runner = await newRunner("keys");
    const job = await generate(t.key, { model: "keys-model" });
    const l = await lease(runner.token, { models: ["keys-model"] });
    const [good] = await uploadOutputs(l.body);
    const put = async (key: string) => {
      const bytes = new TextEncoder().encode(`png ${good!.storage_key}`);
      await env.BUCKET!.put(key, bytes, { httpMetadata: { contentType: "image/png" }, sha256: good!.sha256 });
      return { ...good!, storage_key: key };
    };
    const completeWith = (images: unknown[]) =>
      call("POST", `/internal/v1/jobs/${job.body.id}/complete`, {
        token: runner.token,
        body: { lease_id: l.body.lease_id, images, timings: { inference_ms: 7 } },
      });
    const elsewhere = [
      // Stored under another tenant's prefix, and under another lease's: the bytes are there, the keys are wrong.
      await put(good!.storage_key.replace(`tenants/${t.id}/`, `tenants/${other.id}/`)),
      await put(good!.storage_key.replace(l.body.lease_id, "lease_someoneelse")),
    ];
    for (const image of elsewhere) {
      const refused = await completeWith([image]);
      expect(refused.status).toBe(400);
      expect(refused.body.error.code).toBe("invalid_images");
    }
    const twice = await completeWith([good, { ...good!, index: 1 }]);
    expect(twice.body.error.code).toBe("invalid_images");
    const stored = () =>
      env.DB.prepare("SELECT count(*) AS n FROM images WHERE job_id = ?").bind(job.body.id).first<{ n: number }>();
    expect((await stored())!.n).toBe(0);
    const row = await env.DB.prepare("SELECT status FROM jobs WHERE id = ?")
      .bind(job.body.id)
      .first<{ status: string }>();
    expect(row!.status).toBe("running");
    const done = await completeWith([good]);
    expect(done.body).toEqual({ ok: true, status: "succeeded" });
    expect((await stored())!.n).toBe(1);
    const seen = await call("GET", `/v1/generations/${job.body.id}`, { token: t.key });
    expect(seen.body.timings.inference_ms).toBe(7);
    expect(seen.body.timings.queue_ms).toBeGreaterThanOrEqual(0);
    expect(seen.body.timings.total_ms).toBeGreaterThanOrEqual(seen.body.timings.queue_ms);
    // A repeat is acknowledged and changes nothing.
    expect((await completeWith([good])).body).toEqual({ ok: true, status: "succeeded" });
    expect((await stored())!.n).toBe(1);
  });

  it("an expired lease is requeued, leased by another runner, and the old lease can no longer complete", async () => {
    const t = await newTenant("expiry");
    const dead = await newRunner("dead");
    const alive = await newRunner("alive");
    const job = await generate(t.key);
    const first = await lease(dead.token);
    await expireLease(job.body.id);
    const second = await lease(alive.token);
    expect(second.status).toBe(200);
    expect(second.body.job.id).toBe(job.body.id);
    expect(second.body.job.attempt).toBe(2);
    const late = await complete(dead.token, first.body);
    expect(late.status).toBe(409);
    const lateBeat = await heartbeat(dead.token, job.body.id, { lease_id: first.body.lease_id });
    expect(lateBeat.status).toBe(409);
    const ok = await complete(alive.token, second.body);
    expect(ok.status).toBe(200);
  });

  it("a lease past its deadline, not yet swept, can neither heartbeat, get upload URLs, nor complete", async () => {
    const t = await newTenant("late");
    const runner = await newRunner("late");
    await registerModel("late-model");
    const job = await generate(t.key, { model: "late-model" });
    const l = await lease(runner.token, { models: ["late-model"] });
    const images = await uploadOutputs(l.body);
    await expireLease(job.body.id);
    const done = await call("POST", `/internal/v1/jobs/${job.body.id}/complete`, {
      token: runner.token,
      body: { lease_id: l.body.lease_id, images },
    });
    expect(done.status).toBe(409);
    expect(done.body.error.code).toBe("lease_expired");
    expect((await heartbeat(runner.token, job.body.id, { lease_id: l.body.lease_id })).body.error.code).toBe(
      "lease_expired",
    );
    const urls = await call("POST", `/internal/v1/jobs/${job.body.id}/outputs`, {
      token: runner.token,
      body: { lease_id: l.body.lease_id, images: [{ index: 0, sha256: images[0]!.sha256, size_bytes: 9 }] },
    });
    expect(urls.body.error.code).toBe("lease_expired");
    const seen = await call("GET", `/v1/generations/${job.body.id}`, { token: t.key });
    expect(seen.body.status).toBe("running");
    expect(seen.body.images).toHaveLength(0);
  });

  it("a runner whose lease expired cannot overwrite the images of the attempt that won", async () => {
    const t = await newTenant("stale");
    const stale = await newRunner("stale");
    const alive = await newRunner("fresh");
    await registerModel("stale-model");
    const job = await generate(t.key, { model: "stale-model" });
    const first = await lease(stale.token, { models: ["stale-model"] });
    await expireLease(job.body.id);
    const second = await lease(alive.token, { models: ["stale-model"] });
    // Keys per lease: the stale runner's key is not the one the job keeps.
    const [a, b] = [first.body.outputs[0].storage_key, second.body.outputs[0].storage_key];
    expect(a).toBe(`tenants/${t.id}/outputs/${job.body.id}/${first.body.lease_id}/0.png`);
    expect(b).toBe(`tenants/${t.id}/outputs/${job.body.id}/${second.body.lease_id}/0.png`);
    expect((await complete(alive.token, second.body)).status).toBe(200);
    // And no upload URL for a lease that ended.
    const urls = await call("POST", `/internal/v1/jobs/${job.body.id}/outputs`, {
      token: stale.token,
      body: { lease_id: first.body.lease_id, images: [{ index: 0, sha256: "a".repeat(64), size_bytes: 9 }] },
    });
    expect(urls.status).toBe(409);
    await uploadOutputs(first.body);
    const seen = await call("GET", `/v1/generations/${job.body.id}`, { token: t.key });
    expect(decodeURIComponent(new URL(seen.body.images[0].url).pathname)).toMatch(new RegExp(`/${b}$`));
    const kept = await env.BUCKET!.get(b);
    expect(await kept!.text()).toBe(`png ${b}`);
  });

  it("after its last attempt an expired job fails with a clear error", async () => {
    const t = await newTenant("exhausted");
    const runner = await newRunner("flaky");
    await registerModel("exhaust-model");
    const job = await generate(t.key, { model: "exhaust-model" });
    for (let attempt = 1; attempt <= 3; attempt++) {
      const l = await lease(runner.token, { models: ["exhaust-model"] });
      expect(l.body.job.attempt).toBe(attempt);
      await expireLease(job.body.id);
    }
    const none = await lease(runner.token, { models: ["exhaust-model"] });
    expect(none.status).toBe(204);
    const seen = await call("GET", `/v1/generations/${job.body.id}`, { token: t.key });
    expect(seen.body.status).toBe("failed");
    expect(seen.body.error.code).toBe("lease_expired");
    expect(seen.body.error.message).toMatch(/stopped answering, 3 times/);
  });

  it("a retryable failure requeues while attempts remain; a final one fails the job", async () => {
    const t = await newTenant("failing");
    const runner = await newRunner("f");
    const job = await generate(t.key);
    const l1 = await lease(runner.token);
    const f1 = await call("POST", `/internal/v1/jobs/${job.body.id}/fail`, {
      token: runner.token,
      body: { lease_id: l1.body.lease_id, error: { code: "oom", message: "out of memory" }, retryable: true },
    });
    expect(f1.body).toEqual({ ok: true, status: "queued" });
    const l2 = await lease(runner.token);
    expect(l2.body.job.id).toBe(job.body.id);
    const body = {
      lease_id: l2.body.lease_id,
      error: { code: "bad_addon", message: "LoRA key matches no layer" },
      retryable: false,
    };
    const f2 = await call("POST", `/internal/v1/jobs/${job.body.id}/fail`, { token: runner.token, body });
    expect(f2.body).toEqual({ ok: true, status: "failed" });
    const f3 = await call("POST", `/internal/v1/jobs/${job.body.id}/fail`, { token: runner.token, body });
    expect(f3.status).toBe(200);
    expect(f3.body).toEqual({ ok: true, status: "failed" });
    const seen = await call("GET", `/v1/generations/${job.body.id}`, { token: t.key });
    expect(seen.body.error).toEqual({ code: "bad_addon", message: "LoRA key matches no layer" });
  });

  it("a requeued job, and its next attempt, do not show the previous attempt's error", async () => {
    const t = await newTenant("requeue-error");
    await registerModel("requeue-error-model");
    const runner = await newRunner("requeue-error");
    const job = await generate(t.key, { model: "requeue-error-model" });
    const l1 = await lease(runner.token, { models: ["requeue-error-model"] });
    await call("POST", `/internal/v1/jobs/${job.body.id}/fail`, {
      token: runner.token,
      body: { lease_id: l1.body.lease_id, error: { code: "oom", message: "out of memory" }, retryable: true },
    });
    const queued = await call("GET", `/v1/generations/${job.body.id}`, { token: t.key });
    expect(queued.body).toMatchObject({ status: "queued", error: null });
    await lease(runner.token, { models: ["requeue-error-model"] });
    const running = await call("GET", `/v1/generations/${job.body.id}`, { token: t.key });
    expect(running.body).toMatchObject({ status: "running", error: null });
  });

  it("Prefer: wait=N answers with the finished job", async () => {
    const t = await newTenant("sync");
    // A model of its own: jobs other tests left queued must not be the one this runner leases.
    await registerModel("sync-model");
    const runner = await newRunner("sync");
    const worker = (async () => {
      const l = await lease(runner.token, { models: ["sync-model"], wait_ms: 5000 });
      await heartbeat(runner.token, l.body.job.id, { lease_id: l.body.lease_id, progress: { step: 1, total: 4 } });
      return complete(runner.token, l.body);
    })();
    const r = await generate(t.key, { model: "sync-model" }, { prefer: "wait=10" });
    await worker;
    expect(r.status).toBe(200);
    expect(r.body.status).toBe("succeeded");
    expect(r.body.images).toHaveLength(1);
    expect(r.headers.get("preference-applied")).toBe("wait=10");
    const timeout = await generate(t.key, { model: "sync-model" }, { prefer: "wait=1" });
    expect(timeout.status).toBe(202);
    expect(timeout.body.status).toBe("queued");
  });

  it("Prefer: wait reads D1 only at the end, however often the job announces progress", async () => {
    const t = await newTenant("sync-reads");
    await registerModel("sync-reads-model");
    const runner = await newRunner("sync-reads");
    const worker = (async () => {
      const l = await leaseUnacked(runner.token, { models: ["sync-reads-model"], wait_ms: 5000, acknowledge: true });
      for (let step = 1; step <= 4; step++)
        await heartbeat(runner.token, l.body.job.id, { lease_id: l.body.lease_id, progress: { step, total: 4 } });
      return complete(runner.token, l.body);
    })();
    const r = await generate(t.key, { model: "sync-reads-model" }, { prefer: "wait=10" });
    expect((await worker).status).toBe(200);
    expect(r.body.status).toBe("succeeded");
    expect(r.body.images[0].url).toMatch(/^http/);
    expect(r.body.progress).toEqual({ step: 4, total: 4 });
    // Server-Timing names each D1 round trip of the request: key, model, the insert (one batch), the end (one batch),
    // and the key's last-used stamp; five progress announcements add none.
    const d1 = r.headers.get("server-timing")?.match(/d1;dur=[\d.]+;desc="(\d+)x"/);
    expect(d1).not.toBeNull();
    expect(Number(d1![1])).toBeLessThanOrEqual(5);
    expect(r.headers.get("server-timing")).toMatch(/total;dur=\d+/);
  });

  it("a runner's job costs one D1 round trip per call: lease, outputs and complete each (token and model cached)", async () => {
    const t = await newTenant("round-trips");
    await registerModel("round-trip-model");
    const runner = await newRunner("round-trips");
    // The first call reads the runner's row; later ones find it in the isolate's cache.
    expect((await leaseUnacked(runner.token, { models: ["round-trip-model"] })).status).toBe(204);
    const d1 = (r: { headers: Headers }) =>
      Number(r.headers.get("server-timing")?.match(/d1;dur=[\d.]+;desc="(\d+)x"/)?.[1] ?? 0);
    const created = await generate(t.key, { model: "round-trip-model" });
    expect(created.status).toBe(202);
    const l = await leaseUnacked(runner.token, { models: ["round-trip-model"], acknowledge: true });
    expect(l.status).toBe(200);
    // The runner's report, the expiry sweep and the lease: one batch. No add-ons: nothing else to read.
    expect(d1(l), "lease").toBe(1);
    const images = await uploadOutputs(l.body);
    const done = await call("POST", `/internal/v1/jobs/${l.body.job.id}/complete`, {
      token: runner.token,
      body: { lease_id: l.body.lease_id, images, timings: {} },
    });
    expect(done.status).toBe(200);
    expect(d1(done), "complete").toBe(1);
    // A second generation of the same model reads no model row (cached): key, insert.
    const again = await generate(t.key, { model: "round-trip-model" });
    expect(again.status).toBe(202);
    expect(d1(again)).toBeLessThanOrEqual(2);
  });

  it("a waiter for the end only is not woken by rings that say the job goes on", async () => {
    const bell = env.DOORBELL.get(env.DOORBELL.idFromName("job:final-only-test"));
    const seen = await bell.current();
    const waiting = bell.wait(seen, 2000, true);
    await bell.ring({ status: "running" });
    await bell.ring({ status: "running" });
    // Not woken by either (the wait would have answered with rung: true and seq + 1).
    expect(
      await Promise.race([waiting.then(() => "woken"), new Promise((r) => setTimeout(() => r("waiting"), 100))]),
    ).toBe("waiting");
    await bell.ring({ status: "succeeded", final: true });
    expect(await waiting).toMatchObject({ rung: true, seq: seen + 3, note: { status: "succeeded", final: true } });
    // A ring without a note (it says nothing of the job) still wakes such a waiter.
    const other = env.DOORBELL.get(env.DOORBELL.idFromName("job:final-only-test-2"));
    const next = other.wait(await other.current(), 2000, true);
    await other.ring();
    expect(await next).toMatchObject({ rung: true });
  });

  it("jobs share doorbell objects (shards) without waking each other", async () => {
    // Two job ids in the same shard: a ring for one is not a ring for the other.
    const first = "gen_shard_a";
    const same = Array.from({ length: 500 }, (_, i) => `gen_shard_${i}`).find(
      (id) => topicAddress(jobTopic(id)).object === topicAddress(jobTopic(first)).object,
    )!;
    expect(same).toBeDefined();
    expect(topicAddress(jobTopic(first)).key).toBe(first);
    // Spread over the shards, and the runners' queue an object of its own.
    const objects = new Set(Array.from({ length: 2000 }, (_, i) => topicAddress(jobTopic(`gen_${i}`)).object));
    expect(objects.size).toBe(JOB_SHARDS);
    expect(topicAddress(QUEUE_TOPIC)).toEqual({ object: QUEUE_TOPIC, key: "" });
    const a = doorbell(env, jobTopic(first));
    const b = doorbell(env, jobTopic(same));
    const waiting = a.wait(await a.current(), 2000);
    await b.ring({ status: "succeeded", final: true });
    expect(
      await Promise.race([waiting.then(() => "woken"), new Promise((r) => setTimeout(() => r("waiting"), 100))]),
    ).toBe("waiting");
    await a.ring({ status: "running" });
    expect(await waiting).toMatchObject({ rung: true, seq: 1, note: { status: "running" } });
    expect(await b.current()).toBe(1);
  });

  it("a late announcement cannot hide a job's end from a waiter (the doorbell keeps the final note)", async () => {
    const bell = env.DOORBELL.get(env.DOORBELL.idFromName("job:late-ring-test"));
    const seen = await bell.current();
    await bell.ring({ status: "succeeded", final: true });
    // The acknowledgement's ring, sent in the background, lands after the end.
    await bell.ring({ status: "running" });
    const woke = await bell.wait(seen, 1000);
    expect(woke).toMatchObject({ rung: true, seq: seen + 2, note: { status: "succeeded", final: true } });
    const idle = await bell.wait(woke.seq, 50);
    expect(idle.rung).toBe(false);
  });
});
