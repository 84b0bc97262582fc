/**
 * Every change of a job's state is announced here, one way: create, lease, progress, cancel, complete, fail, and
 * the requeues (lease expiry, retryable failure). The job's own doorbell wakes its watchers (SSE streams,
 * `Prefer: wait`); the queue's doorbell wakes idle runners whenever a job becomes leasable; a job that ended
 * records and sends its webhook. Usage is not counted here: it is written in the same transaction as the change
 * it counts, so that the daily image cap holds under concurrent creates.
 */
import { jobsTable, type Db, type webhooksTable } from "@imagegen/db";
import type { Context } from "hono";
import type { AppEnv } from "../context.ts";
import { doorbell, jobTopic, QUEUE_TOPIC } from "../dispatch/doorbell.ts";
import type { Env } from "../env.ts";
import { mark } from "../middleware/server-timing.ts";
import { generationEnded } from "../webhooks/index.ts";

/** What announcing needs: the doorbells, the database (webhook deliveries), and work that may finish after the answer. */
export interface Announcer {
  env: Env;
  db: Db;
  waitUntil(p: Promise<unknown>): void;
}

export const announcerOf = (c: Context<AppEnv>): Announcer => ({
  env: c.env,
  db: c.var.db,
  waitUntil: (p) => c.executionCtx.waitUntil(p),
});

const TERMINAL = new Set(jobsTable.TERMINAL);

/**
 * Tells everyone who cares that `job` (as it is now) changed. Returns the sequence number of the job's doorbell
 * after this change: a watcher that holds `job` waits from it without reading the row again.
 */
export async function announce(
  to: Announcer,
  job: jobsTable.Job,
  /** For a job that ended: its tenant's webhook endpoints for the event, read in the same round trip as the end. */
  endpoints?: webhooksTable.Endpoint[],
): Promise<number> {
  const final = TERMINAL.has(job.status);
  const [seq] = await Promise.all([
    doorbell(to.env, jobTopic(job.id)).ring({ status: job.status, final }),
    job.status === "queued" ? doorbell(to.env, QUEUE_TOPIC).ring() : undefined,
  ]);
  mark("rung", job.id);
  if (final) await generationEnded(to.env, to.db, job, to.waitUntil, endpoints);
  return seq;
}

/**
 * A job just created: only the runners' doorbell rings. The job's own doorbell has never rung (its id is new), so its
 * number is 0 and whoever follows the job starts from there: a ring for the creation would wake nobody.
 */
export async function announceCreated(to: Announcer, job: jobsTable.Job): Promise<number> {
  await doorbell(to.env, QUEUE_TOPIC).ring();
  mark("rung", job.id);
  return 0;
}
