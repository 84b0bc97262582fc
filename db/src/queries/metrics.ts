/**
 * The operator's metrics: what the queue holds and who serves it, read in one D1 batch (one round trip, one
 * consistent snapshot). The job counts run on the status indexes (`jobs_queue`, `jobs_lease_expiry`); models and
 * runners are small tables.
 */
import { TERMINAL_JOB_STATUSES } from "@imagegen/contracts/enums";
import { and, count, eq, gte, inArray, isNull, min, or, sql, sum } from "drizzle-orm";
import type { Db } from "../index.ts";
import { jobs, models, runners } from "../schema.ts";

export interface ModelQueue {
  modelId: string;
  /** Queued jobs. */
  jobs: number;
  /** Images those jobs ask for. */
  images: number;
  /** Creation time of the oldest queued job (ms). */
  oldestCreatedAt: number;
}

export interface ModelLeases {
  modelId: string;
  /** Running jobs whose lease has not expired. */
  leased: number;
  /** Of those, the ones the runner has acknowledged (the others are provisional leases). */
  acknowledged: number;
}

export interface QueueSnapshot {
  /** Every registered model, so that a model with an empty queue still reports zeros. */
  models: string[];
  queued: ModelQueue[];
  leased: ModelLeases[];
  /** Jobs that reached each terminal status, ever (jobs rows are never deleted, and a terminal status is final). */
  finished: Array<{ status: (typeof TERMINAL_JOB_STATUSES)[number]; jobs: number }>;
  /** Jobs ever created. */
  created: number;
  runners: {
    /** Enabled, not revoked, and seen within the window or holding an unexpired lease. */
    live: number;
    /** The leases those live runners may hold at once (sum of their capacities). */
    liveCapacity: number;
    /** Registered and not revoked, whatever their status. */
    registered: number;
  };
}

/**
 * Reads the queue and runner state at `now`. A runner counts as live when it called the runner API (a lease poll
 * reports it) within `liveWindowMs`, or holds a lease that has not expired (a runner busy on one long job polls
 * no lease, and its heartbeats need not report).
 */
export async function queueSnapshot(db: Db, now: number, liveWindowMs: number): Promise<QueueSnapshot> {
  const holdsLease = sql`EXISTS (SELECT 1 FROM jobs l WHERE l.lease_owner = ${runners.id} AND l.status = 'running' AND l.lease_expires_at >= ${now})`;
  const enabled = and(isNull(runners.revokedAt), eq(runners.status, "active"));
  const [modelRows, queued, leased, finished, created, live, registered] = await db.batch([
    db.select({ id: models.id }).from(models),
    db
      .select({
        modelId: jobs.modelId,
        jobs: count(),
        images: sum(jobs.imageCount).mapWith(Number),
        oldestCreatedAt: min(jobs.createdAt).mapWith(Number),
      })
      .from(jobs)
      .where(eq(jobs.status, "queued"))
      .groupBy(jobs.modelId),
    db
      .select({
        modelId: jobs.modelId,
        leased: count(),
        acknowledged: count(jobs.leaseAckedAt),
      })
      .from(jobs)
      .where(and(eq(jobs.status, "running"), gte(jobs.leaseExpiresAt, now)))
      .groupBy(jobs.modelId),
    db
      .select({ status: jobs.status, jobs: count() })
      .from(jobs)
      .where(inArray(jobs.status, [...TERMINAL_JOB_STATUSES]))
      .groupBy(jobs.status),
    db.select({ n: count() }).from(jobs),
    db
      .select({ n: count(), capacity: sum(runners.capacity).mapWith(Number) })
      .from(runners)
      .where(and(enabled, or(gte(runners.lastSeenAt, now - liveWindowMs), holdsLease))),
    db.select({ n: count() }).from(runners).where(isNull(runners.revokedAt)),
  ]);
  return {
    models: modelRows.map((m) => m.id),
    queued: queued.map((q) => ({ ...q, images: q.images ?? 0 })),
    leased,
    finished: finished.map((f) => ({ status: f.status as QueueSnapshot["finished"][number]["status"], jobs: f.jobs })),
    created: created[0]?.n ?? 0,
    runners: {
      live: live[0]?.n ?? 0,
      liveCapacity: live[0]?.capacity ?? 0,
      registered: registered[0]?.n ?? 0,
    },
  };
}
