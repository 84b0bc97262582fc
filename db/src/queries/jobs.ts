/**
 * The job queue. Every state change is one SQL statement (or one D1 batch, which runs as a transaction), guarded
 * by the state it expects, so concurrent callers cannot both win: a job is leased by one runner, completed once,
 * and an expired lease is requeued or failed exactly once.
 */
import { ACTIVE_JOB_STATUSES, TERMINAL_JOB_STATUSES } from "@imagegen/contracts/enums";
import type { Provenance, Timings } from "@imagegen/contracts/generations";
import { and, desc, eq, gte, inArray, lt, sql } from "drizzle-orm";
import { type D1LikeResult, rowsOf, type Statement, transaction } from "../batch.ts";
import type { Db } from "../index.ts";
import { images, jobs, type JobStatus } from "../schema.ts";
import { utcDay } from "./usage.ts";

export type Job = typeof jobs.$inferSelect;
export type NewJob = typeof jobs.$inferInsert;
export type Image = typeof images.$inferSelect;
export type NewImage = typeof images.$inferInsert;

export const ACTIVE: JobStatus[] = [...ACTIVE_JOB_STATUSES];
export const TERMINAL: JobStatus[] = [...TERMINAL_JOB_STATUSES];

export interface Caps {
  maxConcurrentJobs: number;
  maxImagesPerDay: number;
}

export type InsertOutcome = { ok: true; job: Job } | { ok: false; reason: "concurrency" | "daily_images" };

/**
 * Inserts a queued job only if the tenant is under its caps, and counts its images against today's usage,
 * in one transaction: two concurrent creates cannot both slip under a cap.
 */
export async function insertJobWithinCaps(
  db: Db,
  job: NewJob & { createdAt: number },
  caps: Caps,
): Promise<InsertOutcome> {
  const day = utcDay(job.createdAt);
  const guard = sql`(SELECT count(*) FROM jobs WHERE tenant_id = ${job.tenantId} AND status IN ('queued', 'running')) < ${caps.maxConcurrentJobs}
    AND coalesce((SELECT images FROM usage_counters WHERE tenant_id = ${job.tenantId} AND day = ${day}), 0) + ${job.imageCount} <= ${caps.maxImagesPerDay}`;
  const insert = sql`INSERT INTO jobs (id, tenant_id, api_key_id, model_id, status, request, addon_refs, image_count, attempts,
      max_attempts, idempotency_key, request_hash, webhook_url, created_at)
    SELECT ${job.id}, ${job.tenantId}, ${job.apiKeyId ?? null}, ${job.modelId}, 'queued', ${JSON.stringify(job.request)},
      ${JSON.stringify(job.addonRefs)}, ${job.imageCount}, 0, ${job.maxAttempts}, ${job.idempotencyKey ?? null},
      ${job.requestHash ?? null}, ${job.webhookUrl ?? null}, ${job.createdAt}
    WHERE ${guard}`;
  const count = sql`INSERT INTO usage_counters (tenant_id, day, jobs, images, inference_ms)
    SELECT ${job.tenantId}, ${day}, 1, ${job.imageCount}, 0 WHERE EXISTS (SELECT 1 FROM jobs WHERE id = ${job.id})
    ON CONFLICT (tenant_id, day) DO UPDATE SET jobs = jobs + 1, images = images + excluded.images`;
  // One round trip: the insert, its usage, and the row as inserted (D1 runs a batch as one transaction).
  const results = await transaction(db, [insert, count, selectJob(db, job.id)]);
  const created = jobRow(results[2]!);
  if (created) return { ok: true, job: created };
  const active = await db.$count(jobs, and(eq(jobs.tenantId, job.tenantId), inArray(jobs.status, ACTIVE)));
  return { ok: false, reason: active >= caps.maxConcurrentJobs ? "concurrency" : "daily_images" };
}

/** A statement reading one job, for the end of a `transaction` (raw rows: `jobRow` maps its answer). */
const selectJob = (db: Db, id: string) => db.select().from(jobs).where(eq(jobs.id, id));

/** The job row a raw `selectJob` answered, mapped as drizzle maps it (column names, JSON and booleans decoded). */
const jobRow = (result: { results?: unknown[] }): Job | undefined => rowsOf(jobs, result)[0];

export async function findByIdempotencyKey(db: Db, tenantId: string, key: string): Promise<Job | undefined> {
  return db.query.jobs.findFirst({ where: and(eq(jobs.tenantId, tenantId), eq(jobs.idempotencyKey, key)) });
}

/** The newest job one API key created since `since` from a body with this hash: what a client's retry resends. */
export async function findRecentByRequestHash(
  db: Db,
  tenantId: string,
  apiKeyId: string,
  requestHash: string,
  since: number,
): Promise<Job | undefined> {
  return db.query.jobs.findFirst({
    where: and(
      eq(jobs.tenantId, tenantId),
      eq(jobs.apiKeyId, apiKeyId),
      eq(jobs.requestHash, requestHash),
      gte(jobs.createdAt, since),
    ),
    orderBy: desc(jobs.createdAt),
  });
}

export async function getJob(db: Db, tenantId: string, id: string): Promise<Job | undefined> {
  return db.query.jobs.findFirst({ where: and(eq(jobs.id, id), eq(jobs.tenantId, tenantId)) });
}

export async function getJobAnyTenant(db: Db, id: string): Promise<Job | undefined> {
  return db.query.jobs.findFirst({ where: eq(jobs.id, id) });
}

const imagesOf = (db: Db, jobIds: string[]) =>
  db.select().from(images).where(inArray(images.jobId, jobIds)).orderBy(images.jobId, images.index);

export async function jobImages(db: Db, jobIds: string[]): Promise<Image[]> {
  if (jobIds.length === 0) return [];
  return imagesOf(db, jobIds);
}

/** A tenant's job and its images, in one round trip (what a finished job's answer shows). */
export async function getJobWithImages(
  db: Db,
  tenantId: string,
  id: string,
): Promise<{ job: Job; images: Image[] } | undefined> {
  const [job, rows] = await db.batch([
    db.query.jobs.findFirst({ where: and(eq(jobs.id, id), eq(jobs.tenantId, tenantId)) }),
    imagesOf(db, [id]),
  ]);
  return job ? { job, images: rows } : undefined;
}

export interface ListFilter {
  status?: JobStatus;
  modelId?: string;
  /** Id of the last job of the previous page: ids sort by creation time. */
  after?: string;
  limit: number;
}

/** Newest first, one page plus one row to tell whether more exist. */
export async function listJobs(db: Db, tenantId: string, f: ListFilter): Promise<{ jobs: Job[]; hasMore: boolean }> {
  const rows = await db
    .select()
    .from(jobs)
    .where(
      and(
        eq(jobs.tenantId, tenantId),
        f.status ? eq(jobs.status, f.status) : undefined,
        f.modelId ? eq(jobs.modelId, f.modelId) : undefined,
        f.after ? lt(jobs.id, f.after) : undefined,
      ),
    )
    .orderBy(desc(jobs.id))
    .limit(f.limit + 1);
  return { jobs: rows.slice(0, f.limit), hasMore: rows.length > f.limit };
}

/** Cancels a queued or running job; a running job's runner learns of it on its next heartbeat. */
export async function cancelJob(db: Db, tenantId: string, id: string, now: number): Promise<Job | undefined> {
  const [row] = await db
    .update(jobs)
    .set({ status: "canceled", finishedAt: now, errorCode: "canceled", errorMessage: "The job was canceled." })
    .where(and(eq(jobs.id, id), eq(jobs.tenantId, tenantId), inArray(jobs.status, ACTIVE)))
    .returning();
  return row;
}

export interface LeaseRequest {
  runnerId: string;
  /** The most leases this runner may hold at once: at that many unexpired leases it gets no job. */
  capacity: number;
  models: string[];
  warmAddons: string[];
  leaseId: string;
  now: number;
  /** How long the runner has to acknowledge the lease (`heartbeat`) before the job goes back, attempt uncounted. */
  ackTimeoutMs: number;
  /** Jobs older than this are preferred over warm-add-on matches: affinity never starves a job. */
  affinityMaxWaitMs: number;
  /** How many of each tenant's oldest queued jobs compete: enough for affinity to find a warm match. */
  headsPerTenant?: number;
  /**
   * The runner acknowledges in its lease request (`LeaseBody.acknowledge`): the lease is acknowledged as it is
   * made, with this TTL, and no heartbeat needs to confirm it.
   */
  acknowledgeTtlMs?: number;
}

/**
 * Leases one queued job, atomically (one UPDATE … WHERE id = (SELECT …) AND status = 'queued').
 * The lease is provisional until the runner acknowledges it (`heartbeat`): a long poll can hand a job to a runner that
 * has already gone, so the attempt is counted, and the full lease deadline starts, only at the acknowledgement.
 * Order: tenants with the fewest running jobs first (a burst from one tenant cannot starve another), then jobs
 * that have waited past the affinity bound, then jobs whose add-ons this runner holds warm, then the oldest.
 */
export async function leaseJob(db: Db, r: LeaseRequest): Promise<Job | undefined> {
  const [row] = await leaseStatement(db, r);
  return row;
}

/**
 * Requeues expired leases (as `expireLeases`) and leases up to one job per lease id (each as `leaseJob` would, one
 * after the other) in one round trip: one D1 batch, run in order as one transaction, so a job the sweep requeued can
 * be leased at once, and each lease sees the ones before it (tenants' running counts, the runner's capacity).
 */
export async function expireAndLease(
  db: Db,
  r: Omit<LeaseRequest, "leaseId"> & { leaseIds: string[] },
  /** Another write of the same call in the same round trip (the runner's report: `runnersTable.reportRunner`). */
  also?: Parameters<Db["batch"]>[0][number],
): Promise<{ expired: Job[]; jobs: Job[] }> {
  if (r.leaseIds.length === 0) throw new RangeError("expireAndLease needs at least one lease id");
  const leases = r.leaseIds.map((leaseId) => leaseStatement(db, { ...r, leaseId }));
  const results = await db.batch([expireStatement(db, r.now), ...leases, ...(also ? [also] : [])]);
  const jobs = results.slice(1, 1 + leases.length).flatMap((rows) => rows as Job[]);
  return { expired: results[0] as Job[], jobs };
}

function leaseStatement(db: Db, r: LeaseRequest) {
  const heads = r.headsPerTenant ?? 8;
  const pick = sql`(
    SELECT h.id FROM (
      SELECT q.id, q.tenant_id, q.created_at, q.addon_refs,
        ROW_NUMBER() OVER (PARTITION BY q.tenant_id ORDER BY q.id) AS rn
      FROM jobs q
      WHERE q.status = 'queued' AND q.model_id IN (SELECT value FROM json_each(${JSON.stringify(r.models)}))
    ) h
    WHERE h.rn <= ${heads}
    ORDER BY
      (SELECT count(*) FROM jobs b WHERE b.tenant_id = h.tenant_id AND b.status = 'running') ASC,
      (h.created_at <= ${r.now - r.affinityMaxWaitMs}) DESC,
      (SELECT count(*) FROM json_each(h.addon_refs) a
        WHERE a.value IN (SELECT value FROM json_each(${JSON.stringify(r.warmAddons)}))) DESC,
      h.id ASC
    LIMIT 1)`;
  const held = sql`(SELECT count(*) FROM jobs o WHERE o.lease_owner = ${r.runnerId} AND o.status = 'running' AND o.lease_expires_at >= ${r.now})`;
  return db
    .update(jobs)
    .set({
      status: "running",
      leaseId: r.leaseId,
      leaseOwner: r.runnerId,
      // Acknowledged in the lease itself: the attempt counts now and the full TTL starts.
      ...(r.acknowledgeTtlMs !== undefined
        ? { ...acknowledgeNew(r.now), leaseExpiresAt: r.now + r.acknowledgeTtlMs }
        : { leaseExpiresAt: r.now + r.ackTimeoutMs, leaseAckedAt: null }),
      progressStep: null,
      progressTotal: null,
      // A running job shows no error: a previous attempt's is history, not its state.
      errorCode: null,
      errorMessage: null,
    })
    .where(and(sql`${jobs.id} = ${pick}`, eq(jobs.status, "queued"), sql`${held} < ${r.capacity}`))
    .returning();
}

/**
 * Puts jobs whose lease expired back in the queue, or fails them once they used up their attempts. A lease never
 * acknowledged cost no attempt: its job simply goes back. Returns the jobs it changed, as they are now, so the
 * caller can announce each.
 */
export async function expireLeases(db: Db, now: number): Promise<Job[]> {
  return expireStatement(db, now);
}

function expireStatement(db: Db, now: number) {
  const exhausted = sql`(${jobs.leaseAckedAt} IS NOT NULL AND ${jobs.attempts} >= ${jobs.maxAttempts})`;
  return db
    .update(jobs)
    .set({
      status: sql`CASE WHEN ${exhausted} THEN 'failed' ELSE 'queued' END`,
      errorCode: sql`CASE WHEN ${exhausted} THEN 'lease_expired' ELSE NULL END`,
      errorMessage: sql`CASE WHEN ${exhausted} THEN 'The runner working on this job stopped answering, ' || ${jobs.attempts} || ' times; the job was given up.' ELSE NULL END`,
      finishedAt: sql`CASE WHEN ${exhausted} THEN ${now} ELSE NULL END`,
      leaseId: null,
      leaseOwner: null,
      leaseExpiresAt: null,
      leaseAckedAt: null,
    })
    .where(and(eq(jobs.status, "running"), lt(jobs.leaseExpiresAt, now)))
    .returning();
}

export type LeaseCheck =
  | { ok: true; job: Job }
  | { ok: false; reason: "not_found" | "lease_lost" | "lease_expired" | "canceled" | "already_finished"; job?: Job };

/** Whether `leaseId` still holds job `id` for runner `runnerId` at `now` (an expired lease not yet swept holds nothing). */
export async function checkLease(
  db: Db,
  id: string,
  runnerId: string,
  leaseId: string,
  now: number,
): Promise<LeaseCheck> {
  const job = await getJobAnyTenant(db, id);
  if (!job) return { ok: false, reason: "not_found" };
  if (job.leaseId !== leaseId || job.leaseOwner !== runnerId) return { ok: false, reason: "lease_lost", job };
  if (job.status === "canceled") return { ok: false, reason: "canceled", job };
  if (job.status !== "running") return { ok: false, reason: "already_finished", job };
  if (job.leaseExpiresAt === null || job.leaseExpiresAt < now) return { ok: false, reason: "lease_expired", job };
  return { ok: true, job };
}

/** The guard of every write a lease holder makes: its lease, on a running job, not past its deadline. */
const holds = (id: string, leaseId: string, runnerId: string, now: number) =>
  and(
    eq(jobs.id, id),
    eq(jobs.leaseId, leaseId),
    eq(jobs.leaseOwner, runnerId),
    eq(jobs.status, "running"),
    gte(jobs.leaseExpiresAt, now),
  );

/** A lease acknowledged as it is made: its attempt counts (the lease is new, so never acknowledged before). */
const acknowledgeNew = (now: number) => ({
  attempts: sql`${jobs.attempts} + 1`,
  leaseAckedAt: now,
  startedAt: sql`coalesce(${jobs.startedAt}, ${now})`,
});

/** Acknowledging a lease (its first heartbeat, or a complete without one) counts the attempt, once. */
const acknowledge = (now: number) => ({
  attempts: sql`${jobs.attempts} + (${jobs.leaseAckedAt} IS NULL)`,
  leaseAckedAt: sql`coalesce(${jobs.leaseAckedAt}, ${now})`,
  startedAt: sql`coalesce(${jobs.startedAt}, ${now})`,
});

export interface Heartbeat {
  id: string;
  runnerId: string;
  leaseId: string;
  now: number;
  leaseTtlMs: number;
  step?: number;
  total?: number;
}

/** Extends a lease (acknowledging it on the first call) and records progress. */
export async function heartbeat(db: Db, h: Heartbeat): Promise<Job | undefined> {
  const [row] = await heartbeatStatement(db, h);
  return row;
}

/**
 * A heartbeat and another write of the same call (the runner's report of what it holds warm), in one round trip.
 * `also` is any statement of another table's query module (e.g. `runnersTable.reportRunner`).
 */
export async function heartbeatWith(
  db: Db,
  h: Heartbeat,
  also: Parameters<Db["batch"]>[0][number],
): Promise<Job | undefined> {
  const [, rows] = await db.batch([also, heartbeatStatement(db, h)]);
  return (rows as Job[])[0];
}

function heartbeatStatement(db: Db, h: Heartbeat) {
  return db
    .update(jobs)
    .set({
      ...acknowledge(h.now),
      leaseExpiresAt: h.now + h.leaseTtlMs,
      ...(h.step !== undefined ? { progressStep: h.step } : {}),
      ...(h.total !== undefined ? { progressTotal: h.total } : {}),
    })
    .where(holds(h.id, h.leaseId, h.runnerId, h.now))
    .returning();
}

export interface Completion {
  id: string;
  runnerId: string;
  leaseId: string;
  now: number;
  images: NewImage[];
  /** The runner's timings; the edge's own (`queue_ms`, `total_ms`) are computed from the row as it completes. */
  timings: Timings;
  provenance: Provenance;
  /**
   * Guards a caller that has not read the job first: the tenant its images are stored under, and how many images
   * it asked for. The completion applies only where they hold, as it applies only for the lease that holds the job.
   */
  expect?: { tenantId: string; imageCount: number };
}

/**
 * Completes a job held by this lease, with its images, in one transaction, and reads the row back in the same round
 * trip. Repeating it changes nothing. `completed`: this call made the change (not an earlier one of the same lease).
 */
export async function completeJob(
  db: Db,
  c: Completion,
  /** Reads of the same call, answered in the same round trip after the writes (e.g. the tenant's webhook endpoints). */
  also: Statement[] = [],
): Promise<{ job: Job; completed: boolean; also: D1LikeResult[] } | undefined> {
  const { queue_ms, ...runnerTimings } = c.timings;
  // As the edge always recorded them: the queue wait (unless the runner says), the runner's, then the whole.
  const timings = sql`json_patch(json_patch(json_object('queue_ms', max(0, coalesce(${jobs.startedAt}, ${c.now}) - ${jobs.createdAt})),
      json(${JSON.stringify(queue_ms !== undefined ? { queue_ms, ...runnerTimings } : runnerTimings)})),
    json_object('total_ms', ${c.now} - ${jobs.createdAt}))`;
  const finish = db
    .update(jobs)
    .set({
      ...acknowledge(c.now),
      status: "succeeded",
      finishedAt: c.now,
      timings,
      provenance: c.provenance,
      progressStep: sql`${jobs.progressTotal}`,
      leaseExpiresAt: null,
    })
    .where(
      and(
        holds(c.id, c.leaseId, c.runnerId, c.now),
        c.expect ? eq(jobs.tenantId, c.expect.tenantId) : undefined,
        c.expect ? sql`json_extract(${jobs.request}, '$.n') = ${c.expect.imageCount}` : undefined,
      ),
    );
  const day = utcDay(c.now);
  const inferenceMs = c.timings.inference_ms ?? 0;
  const usage = sql`UPDATE usage_counters SET inference_ms = inference_ms + ${inferenceMs}
    WHERE tenant_id = (SELECT tenant_id FROM jobs WHERE id = ${c.id}) AND day = ${day}
      AND changes() > 0`;
  // Images only of a job this lease completed (now or before: a repeat finds them there and adds nothing).
  const imageInserts = c.images.map(
    (
      img,
    ) => sql`INSERT INTO images (id, job_id, tenant_id, "index", storage_key, width, height, seed, sha256, size_bytes, created_at)
      SELECT ${img.id}, ${img.jobId}, ${img.tenantId}, ${img.index}, ${img.storageKey}, ${img.width}, ${img.height}, ${img.seed},
        ${img.sha256}, ${img.sizeBytes}, ${img.createdAt}
      WHERE EXISTS (SELECT 1 FROM jobs WHERE id = ${c.id} AND status = 'succeeded' AND lease_id = ${c.leaseId} AND tenant_id = ${img.tenantId})
      ON CONFLICT (job_id, "index") DO NOTHING`,
  );
  // One round trip: the writes (one transaction) and the row as they left it.
  const results = await transaction(db, [finish, usage, ...imageInserts, selectJob(db, c.id), ...also]);
  const job = jobRow(results.at(-1 - also.length)!);
  if (job?.status !== "succeeded" || job.leaseId !== c.leaseId) return undefined;
  return { job, completed: (results[0]!.meta.changes ?? 0) > 0, also: results.slice(results.length - also.length) };
}

/**
 * Fails a job held by this lease; a retryable failure goes back to the queue while attempts remain. A lease handed
 * back before it was acknowledged (a runner stopping as the job arrived) counted no attempt and costs none; nor does
 * one handed back with `refund` (the store failed, not the job): it goes back whatever its attempts, uncounted.
 */
export async function failJob(
  db: Db,
  f: {
    id: string;
    runnerId: string;
    leaseId: string;
    now: number;
    code: string;
    message: string;
    retryable: boolean;
    refund?: boolean;
  },
): Promise<Job | undefined> {
  const retry = f.refund ? sql`1` : f.retryable ? sql`${jobs.attempts} < ${jobs.maxAttempts}` : sql`0`;
  const [row] = await db
    .update(jobs)
    .set({
      ...(f.refund ? { attempts: sql`${jobs.attempts} - (${jobs.leaseAckedAt} IS NOT NULL)` } : {}),
      status: sql`CASE WHEN ${retry} THEN 'queued' ELSE 'failed' END`,
      // A requeued job is waiting, not failed: the attempt's error is not its state.
      errorCode: sql`CASE WHEN ${retry} THEN NULL ELSE ${f.code} END`,
      errorMessage: sql`CASE WHEN ${retry} THEN NULL ELSE ${f.message} END`,
      finishedAt: sql`CASE WHEN ${retry} THEN NULL ELSE ${f.now} END`,
      leaseId: sql`CASE WHEN ${retry} THEN NULL ELSE ${jobs.leaseId} END`,
      leaseOwner: sql`CASE WHEN ${retry} THEN NULL ELSE ${jobs.leaseOwner} END`,
      leaseExpiresAt: null,
      leaseAckedAt: sql`CASE WHEN ${retry} THEN NULL ELSE ${jobs.leaseAckedAt} END`,
    })
    .where(holds(f.id, f.leaseId, f.runnerId, f.now))
    .returning();
  return row;
}

/** Images past their tenant's retention that are still stored (oldest first, a bounded batch per sweep). */
export async function imagesPastRetention(
  db: Db,
  now: number,
  defaultRetentionDays: number,
  limit = 200,
): Promise<Image[]> {
  return db.all<Image>(sql`SELECT i.id, i.job_id AS jobId, i.tenant_id AS tenantId, i."index" AS "index", i.storage_key AS storageKey,
      i.width, i.height, i.seed, i.sha256, i.size_bytes AS sizeBytes, i.created_at AS createdAt, i.deleted_at AS deletedAt
    FROM images i JOIN tenants t ON t.id = i.tenant_id
    WHERE i.deleted_at IS NULL AND i.created_at < ${now} - coalesce(t.retention_days, ${defaultRetentionDays}) * 86400000
    ORDER BY i.created_at LIMIT ${limit}`);
}

export async function markImagesDeleted(db: Db, ids: string[], now: number): Promise<void> {
  if (ids.length) await db.update(images).set({ deletedAt: now }).where(inArray(images.id, ids));
}

/**
 * Jobs that ended in [from, to), with the keys of the images they kept: what any other object under their output
 * prefix is (a canceled job's uploads, an earlier lease's) is an orphan. Oldest first, a bounded batch.
 */
export async function endedJobsWithImages(
  db: Db,
  from: number,
  to: number,
  limit = 100,
): Promise<Array<{ id: string; tenantId: string; keep: string[] }>> {
  const rows = await db.all<{
    id: string;
    tenantId: string;
    keys: string | null;
  }>(sql`SELECT j.id, j.tenant_id AS tenantId,
      (SELECT json_group_array(i.storage_key) FROM images i WHERE i.job_id = j.id) AS keys
    FROM jobs j WHERE j.status IN ('succeeded', 'failed', 'canceled') AND j.finished_at >= ${from} AND j.finished_at < ${to}
    ORDER BY j.finished_at LIMIT ${limit}`);
  return rows.map((r) => ({ id: r.id, tenantId: r.tenantId, keep: r.keys ? (JSON.parse(r.keys) as string[]) : [] }));
}
