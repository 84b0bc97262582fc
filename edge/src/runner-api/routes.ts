/**
 * The runner protocol (`/internal/v1`): lease (long-poll on the queue's doorbell; with `acknowledge`, acknowledged as
 * it is made), heartbeat (acknowledges the lease at first, then extends it, reports progress, learns of cancel),
 * outputs (upload URLs signed with each image's size and checksum), complete and fail (idempotent for the lease that
 * holds the job). Each call makes as few D1 round trips as it can (batches): in production each is a network hop.
 */
import { createRoute, z } from "@hono/zod-openapi";
import { addonsTable, jobsTable, runnersTable, webhooksTable } from "@imagegen/db";
import type { Context } from "hono";
import { type AppEnv, router } from "../context.ts";
import { doorbell, QUEUE_TOPIC } from "../dispatch/doorbell.ts";
import { announceExpired } from "../dispatch/expiry.ts";
import { ApiError } from "../errors.ts";
import { announce, announcerOf } from "../jobs/announce.ts";
import { randomBase32 } from "../lib/ids.ts";
import { mark, timed } from "../middleware/server-timing.ts";
import {
  CompleteBody,
  errorResponses,
  FailBody,
  formatAddonRef,
  HeartbeatBody,
  HeartbeatResult,
  iso,
  LeaseBody,
  LeasedJob,
  LeasedJobs,
  OutputUploadBody,
  OutputUploads,
  RunnerAck,
  STORAGE_UNAVAILABLE,
} from "@imagegen/contracts";
import { type ObjectInfo, type ObjectStore, objectStore, outputKey } from "../storage/index.ts";

/** Add-on downloads live long enough for a slow job; they only read. Output uploads expire with the lease. */
const ADDON_URL_TTL_SECONDS = 3600;

/** Resolves when the runner hangs up (workerd aborts the request's signal under `enable_request_signal`). */
const hungUp = (signal: AbortSignal) =>
  new Promise<void>((resolve) =>
    signal.aborted ? resolve() : signal.addEventListener("abort", () => resolve(), { once: true }),
  );

const JobId = z.object({
  id: z
    .string()
    .min(1)
    .max(64)
    .openapi({ param: { name: "id", in: "path" } }),
});

const lease = createRoute({
  method: "post",
  path: "/lease",
  operationId: "leaseJob",
  tags: ["runner"],
  summary: "Lease a job (long poll)",
  request: { body: { content: { "application/json": { schema: LeaseBody } }, required: true } },
  responses: {
    200: {
      description: "A leased job; with `max_jobs`, up to that many",
      content: { "application/json": { schema: z.union([LeasedJob, LeasedJobs]) } },
    },
    204: { description: "No job within wait_ms" },
    ...errorResponses(400, 401),
  },
});

const heartbeatRoute = createRoute({
  method: "post",
  path: "/jobs/{id}/heartbeat",
  operationId: "heartbeatJob",
  tags: ["runner"],
  summary: "Extend a lease and report progress",
  request: { params: JobId, body: { content: { "application/json": { schema: HeartbeatBody } }, required: true } },
  responses: {
    200: { description: "Lease extended, or cancel", content: { "application/json": { schema: HeartbeatResult } } },
    ...errorResponses(400, 401, 404, 409),
  },
});

const complete = createRoute({
  method: "post",
  path: "/jobs/{id}/complete",
  operationId: "completeJob",
  tags: ["runner"],
  summary: "Complete a leased job with its images",
  request: { params: JobId, body: { content: { "application/json": { schema: CompleteBody } }, required: true } },
  responses: {
    200: {
      description: "Completed (or already completed by this lease)",
      content: { "application/json": { schema: RunnerAck } },
    },
    ...errorResponses(400, 401, 404, 409),
  },
});

const outputs = createRoute({
  method: "post",
  path: "/jobs/{id}/outputs",
  operationId: "signJobOutputs",
  tags: ["runner"],
  summary: "Presigned PUTs for a job's images, signed with each image's size and SHA-256; they expire with the lease",
  request: { params: JobId, body: { content: { "application/json": { schema: OutputUploadBody } }, required: true } },
  responses: {
    200: {
      description: "Upload URLs (the lease was extended)",
      content: { "application/json": { schema: OutputUploads } },
    },
    ...errorResponses(400, 401, 404, 409),
  },
});

const fail = createRoute({
  method: "post",
  path: "/jobs/{id}/fail",
  operationId: "failJob",
  tags: ["runner"],
  summary: "Fail a leased job (retryable failures are requeued while attempts remain)",
  request: { params: JobId, body: { content: { "application/json": { schema: FailBody } }, required: true } },
  responses: {
    200: { description: "Failed, or requeued (status queued)", content: { "application/json": { schema: RunnerAck } } },
    ...errorResponses(400, 401, 404, 409),
  },
});

/** Why a runner's call on a job it does not (or no longer) hold is refused. */
function leaseError(check: jobsTable.LeaseCheck & { ok: false }, id: string): ApiError {
  switch (check.reason) {
    case "not_found":
      return ApiError.notFound("job", id, "id");
    case "lease_lost":
      return ApiError.conflict(
        "lease_lost",
        `This runner does not hold the lease on job '${id}' (it expired or belongs to another runner).`,
      );
    case "lease_expired":
      return ApiError.conflict("lease_expired", `The lease on job '${id}' expired; the job goes back to the queue.`);
    case "canceled":
      return ApiError.conflict("job_canceled", `Job '${id}' was canceled.`);
    case "already_finished":
      return ApiError.conflict("job_already_finished", `Job '${id}' already ${check.job?.status}.`);
  }
}

const ack = (job: jobsTable.Job): RunnerAck => ({ ok: true, status: job.status });

/** The tenant the images' keys name, when each key is the one this lease writes that image to (`outputKey`). */
function tenantOfKeys(
  images: ReadonlyArray<{ index: number; storage_key: string }>,
  jobId: string,
  leaseId: string,
): string | undefined {
  const tenant = images[0]?.storage_key.match(/^tenants\/([^/]+)\/outputs\//)?.[1];
  if (!tenant || new Set(images.map((i) => i.index)).size !== images.length) return undefined;
  return images.every((i) => i.storage_key === outputKey(tenant, jobId, leaseId, i.index)) ? tenant : undefined;
}

/** Whether the store holds each image with the declared size and SHA-256: the refusal to answer, or undefined. */
async function storedProblem(
  store: ObjectStore,
  images: ReadonlyArray<{ index: number; storage_key: string; size_bytes: number; sha256: string }>,
  heads: Map<string, Promise<ObjectInfo | undefined>>,
): Promise<ApiError | undefined> {
  for (const img of images) {
    const stored = await (heads.get(img.storage_key) ?? store.head(img.storage_key));
    if (!stored || stored.size !== img.size_bytes) {
      return ApiError.invalid(
        "output_missing",
        `Image ${img.index} is not in storage with ${img.size_bytes} bytes (found ${stored ? `${stored.size} bytes` : "nothing"}); upload it to the lease's URL first.`,
        "images",
      );
    }
    // The checksum the store verified on the PUT where it keeps one; else the bytes themselves (a few MB at most).
    const sha256 = stored.sha256 ?? (await timed("r2", () => store.sha256(img.storage_key)));
    if (sha256 !== img.sha256) {
      return ApiError.invalid(
        "output_checksum_mismatch",
        `Image ${img.index} in storage has SHA-256 ${sha256}, not the declared ${img.sha256}; upload it again.`,
        "images",
      );
    }
  }
  return undefined;
}

/** The images a job asked for, each once: `images` must name distinct indexes below n (all n when `all`). */
function checkIndexes(job: jobsTable.Job, images: ReadonlyArray<{ index: number }>, all: boolean): void {
  const count = job.request.n;
  const indexes = new Set(images.map((i) => i.index));
  if (indexes.size !== images.length || images.some((i) => i.index >= count) || (all && images.length !== count)) {
    throw ApiError.invalid(
      "invalid_images",
      `Job '${job.id}' asked for ${count} images with distinct indexes 0..${count - 1}.`,
      "images",
    );
  }
}

/**
 * What a runner is told of each job it leased: its request, where its images go, and presigned GETs for its add-ons
 * (the versions of all the jobs' add-ons read in one query). A job whose add-on was deleted while it waited fails
 * here, clearly, rather than run without it, and is left out.
 */
async function leaseAnswers(
  c: Context<AppEnv>,
  jobs: jobsTable.Job[],
  now: number,
  acknowledge: boolean,
): Promise<z.infer<typeof LeasedJob>[]> {
  const { db, settings, runner } = c.var;
  const refs = [...new Set(jobs.flatMap((j) => j.addonRefs))];
  const versions = refs.length ? await addonsTable.versionsForRefs(db, refs) : [];
  const byRef = new Map(versions.map((v) => [formatAddonRef(v.addon.id, v.version.version), v]));
  const store = objectStore(c.env);
  const answers: z.infer<typeof LeasedJob>[] = [];
  for (const job of jobs) {
    mark("leased", job.id);
    const missing = job.addonRefs.filter((ref) => !byRef.has(ref));
    if (missing.length) {
      const failed = await jobsTable.failJob(db, {
        id: job.id,
        runnerId: runner.id,
        leaseId: job.leaseId!,
        now,
        code: "addon_deleted",
        message: `Add-on ${missing.join(", ")} was deleted before the job ran.`,
        retryable: false,
      });
      if (failed) await announce(announcerOf(c), failed);
      continue;
    }
    // An acknowledged lease is running now: its watchers hear of it (in the background of the answer). Otherwise
    // not announced yet: the lease is provisional until the runner acknowledges it (first heartbeat).
    if (acknowledge) c.executionCtx.waitUntil(announce(announcerOf(c), job));
    const addons = await Promise.all(
      [...new Set(job.addonRefs)].map(async (ref) => {
        const { addon, version } = byRef.get(ref)!;
        return {
          id: addon.id,
          version: version.version,
          ref,
          kind: addon.kind,
          sha256: version.sha256,
          size_bytes: version.sizeBytes,
          get_url: await store.presignGet(version.storageKey, ADDON_URL_TTL_SECONDS),
        };
      }),
    );
    answers.push({
      outputs: Array.from({ length: job.request.n }, (_, index) => ({
        index,
        storage_key: outputKey(job.tenantId, job.id, job.leaseId!, index),
        content_type: "image/png" as const,
      })),
      addons,
      lease_id: job.leaseId!,
      lease_expires_at: iso(job.leaseExpiresAt)!,
      ...(acknowledge ? { acknowledged: true, lease_ttl_ms: settings.leaseTtlMs } : {}),
      job: {
        id: job.id,
        tenant_id: job.tenantId,
        // The attempt this lease is (or becomes once acknowledged).
        attempt: acknowledge ? job.attempts : job.attempts + 1,
        queued_ms: now - job.createdAt,
        request: job.request,
      },
    });
  }
  return answers;
}

export const runnerApi = router()
  .openapi(lease, async (c) => {
    const body = c.req.valid("json");
    const { db, settings, runner } = c.var;
    const deadline = Date.now() + body.wait_ms;
    // What the runner holds is written with its first look at the queue (one D1 batch), not in a round trip of its own.
    let report: ReturnType<typeof runnersTable.reportRunner> | undefined = runnersTable.reportRunner(
      db,
      runner.id,
      { warmAddons: body.warm_addons, models: body.models },
      Date.now(),
    );
    // What the runner declares can lower what the operator registered, never raise it.
    const capacity = Math.min(body.capacity, runner.capacity);
    const bell = doorbell(c.env, QUEUE_TOPIC);
    const gone = c.req.raw.signal;
    const hangUp = hungUp(gone);
    const acknowledge = body.acknowledge === true;
    // Read before the first look at the queue; after that, each wait hands over the number it woke at.
    let seq = await bell.current();
    for (;;) {
      // A runner that hung up gets no job (the lease would wait out its ack deadline for nobody).
      if (gone.aborted) return c.body(null, 204);
      const now = Date.now();
      // The expiry sweep and the lease in one round trip (one D1 batch).
      const also = report;
      report = undefined;
      const { expired, jobs } = await jobsTable.expireAndLease(
        db,
        {
          runnerId: runner.id,
          capacity,
          models: body.models,
          warmAddons: body.warm_addons,
          // No more statements than the runner may hold: one past its capacity could never lease.
          leaseIds: Array.from({ length: Math.min(body.max_jobs ?? 1, capacity) }, () => `lease_${randomBase32(20)}`),
          now,
          ackTimeoutMs: settings.leaseAckTimeoutMs,
          affinityMaxWaitMs: settings.affinityMaxWaitMs,
          ...(acknowledge ? { acknowledgeTtlMs: settings.leaseTtlMs } : {}),
        },
        also,
      );
      if (expired.length) await announceExpired(announcerOf(c), expired);
      if (jobs.length) {
        const answers = await leaseAnswers(c, jobs, now, acknowledge);
        // Every job it leased had lost an add-on (each failed clearly): look at the queue again.
        if (answers.length === 0) continue;
        return body.max_jobs === undefined ? c.json(answers[0]!, 200) : c.json({ jobs: answers }, 200);
      }
      const left = deadline - Date.now();
      if (left <= 0) return c.body(null, 204);
      // Also wake in time for the next lease (or acknowledgement) expiry, which no ring announces.
      const woke = await Promise.race([bell.wait(seq, Math.min(left, settings.leaseAckTimeoutMs)), hangUp]);
      if (woke) seq = woke.seq;
      mark("woken");
    }
  })
  .openapi(heartbeatRoute, async (c) => {
    const { id } = c.req.valid("param");
    const body = c.req.valid("json");
    const { db, settings, runner } = c.var;
    const now = Date.now();
    const beat = {
      id,
      runnerId: runner.id,
      leaseId: body.lease_id,
      now,
      leaseTtlMs: settings.leaseTtlMs,
      step: body.progress?.step,
      total: body.progress?.total,
    };
    // The runner's warm add-ons and the lease in one round trip.
    const job = body.warm_addons
      ? await jobsTable.heartbeatWith(
          db,
          beat,
          runnersTable.reportRunner(db, runner.id, { warmAddons: body.warm_addons }, now),
        )
      : await jobsTable.heartbeat(db, beat);
    if (job) {
      const acknowledged = job.leaseAckedAt === now;
      mark(acknowledged ? "acked" : "beat", id);
      // Watchers hear of the start or the progress in the background: the runner's answer does not wait for them.
      if (body.progress || acknowledged) c.executionCtx.waitUntil(announce(announcerOf(c), job));
      return c.json(
        { cancel: false, lease_expires_at: iso(job.leaseExpiresAt), lease_ttl_ms: settings.leaseTtlMs },
        200,
      );
    }
    const check = await jobsTable.checkLease(db, id, runner.id, body.lease_id, now);
    if (!check.ok && check.reason === "canceled") return c.json({ cancel: true, lease_expires_at: null }, 200);
    throw leaseError(check.ok ? { ok: false, reason: "lease_lost" } : check, id);
  })
  .openapi(outputs, async (c) => {
    const { id } = c.req.valid("param");
    const body = c.req.valid("json");
    const { db, settings, runner } = c.var;
    const now = Date.now();
    // Signing uploads is a lease holder's act: it extends the lease (and acknowledges it) as a heartbeat does.
    const job = await jobsTable.heartbeat(db, {
      id,
      runnerId: runner.id,
      leaseId: body.lease_id,
      now,
      leaseTtlMs: settings.leaseTtlMs,
    });
    if (!job) {
      const check = await jobsTable.checkLease(db, id, runner.id, body.lease_id, now);
      throw leaseError(check.ok ? { ok: false, reason: "lease_lost" } : check, id);
    }
    mark("signing", id);
    if (job.leaseAckedAt === now) c.executionCtx.waitUntil(announce(announcerOf(c), job));
    checkIndexes(job, body.images, false);
    const store = objectStore(c.env);
    const ttlSeconds = Math.floor((job.leaseExpiresAt! - now) / 1000);
    const uploads = await Promise.all(
      body.images.map(async (img) => {
        const key = outputKey(job.tenantId, id, body.lease_id, img.index);
        const put = await timed("presign", () =>
          store.presignPut(key, ttlSeconds, {
            contentType: "image/png",
            contentLength: img.size_bytes,
            sha256: img.sha256,
          }),
        );
        return {
          index: img.index,
          storage_key: key,
          put_url: put.url,
          headers: put.headers,
          expires_at: iso(now + ttlSeconds * 1000)!,
        };
      }),
    );
    return c.json({ uploads }, 200);
  })
  .openapi(complete, async (c) => {
    const { id } = c.req.valid("param");
    const body = c.req.valid("json");
    const { db, runner } = c.var;
    mark("completing", id);
    const store = objectStore(c.env);
    // The stores' HEADs start at once, beside whatever is read first; those of keys that prove wrong are thrown away.
    const heads = new Map(
      body.images.map((img) => {
        const head = timed("r2", () => store.head(img.storage_key));
        head.catch(() => {}); // awaited below, or not needed
        return [img.storage_key, head] as const;
      }),
    );
    const completion = (tenantId: string, now: number): jobsTable.Completion => ({
      id,
      runnerId: runner.id,
      leaseId: body.lease_id,
      now,
      images: body.images.map((img) => ({
        id: `img_${id.slice(4)}_${img.index}`,
        jobId: id,
        tenantId,
        index: img.index,
        storageKey: img.storage_key,
        width: img.width,
        height: img.height,
        seed: img.seed,
        sha256: img.sha256,
        sizeBytes: img.size_bytes,
        createdAt: now,
      })),
      timings: body.timings,
      provenance: { ...body.provenance, runner: runner.id },
    });
    // The usual case: the keys are the ones this lease writes to and the store holds what they declare, so the job
    // completes in one guarded D1 batch with no read before it (its guards are the lease check's).
    const tenantId = tenantOfKeys(body.images, id, body.lease_id);
    if (tenantId && !(await storedProblem(store, body.images, heads))) {
      const now = Date.now();
      // The tenant's webhook endpoints are read in the same round trip: the end's announcement needs them.
      const done = await jobsTable.completeJob(
        db,
        { ...completion(tenantId, now), expect: { tenantId, imageCount: body.images.length } },
        [webhooksTable.liveEndpoints(db, tenantId)],
      );
      if (done) {
        if (done.completed)
          await announce(announcerOf(c), done.job, webhooksTable.endpointsFrom(done.also[0], "generation.succeeded"));
        return c.json(ack(done.job), 200);
      }
    }
    // Otherwise each check in turn, so that the answer names what is wrong first: the lease, the images, storage.
    const held = await jobsTable.checkLease(db, id, runner.id, body.lease_id, Date.now());
    const replay = !held.ok && held.reason === "already_finished" && held.job?.status === "succeeded";
    if (!held.ok && !replay) throw leaseError(held, id);
    const job = held.job!;
    checkIndexes(job, body.images, true);
    if (!replay) {
      for (const img of body.images) {
        const expected = outputKey(job.tenantId, id, body.lease_id, img.index);
        if (img.storage_key !== expected)
          throw ApiError.invalid("invalid_images", `Image ${img.index} must be stored at '${expected}'.`, "images");
      }
      const problem = await storedProblem(store, body.images, heads);
      if (problem) throw problem;
    }
    const now = Date.now();
    const done = await jobsTable.completeJob(db, completion(job.tenantId, now));
    if (!done) {
      // Lost a race with cancel or expiry between the check and the write.
      const again = await jobsTable.checkLease(db, id, runner.id, body.lease_id, now);
      throw leaseError(again.ok ? { ok: false, reason: "lease_lost", job: again.job } : again, id);
    }
    if (done.completed) await announce(announcerOf(c), done.job);
    return c.json(ack(done.job), 200);
  })
  .openapi(fail, async (c) => {
    const { id } = c.req.valid("param");
    const body = c.req.valid("json");
    const { db, runner } = c.var;
    const failed = await jobsTable.failJob(db, {
      id,
      runnerId: runner.id,
      leaseId: body.lease_id,
      now: Date.now(),
      code: body.error.code,
      message: body.error.message,
      retryable: body.retryable,
      // The store failed, not the job: requeued without counting the attempt (contracts: STORAGE_UNAVAILABLE).
      refund: body.retryable && body.error.code === STORAGE_UNAVAILABLE,
    });
    if (failed) {
      await announce(announcerOf(c), failed);
      return c.json(ack(failed), 200);
    }
    const check = await jobsTable.checkLease(db, id, runner.id, body.lease_id, Date.now());
    if (!check.ok && check.reason === "already_finished" && check.job?.status === "failed") {
      return c.json(ack(check.job), 200);
    }
    throw leaseError(check.ok ? { ok: false, reason: "lease_lost" } : check, id);
  });
