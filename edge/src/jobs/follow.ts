/** The listening side of `announce`: follow a job through its doorbell instead of polling D1. */
import { jobsTable, type Db } from "@imagegen/db";
import { doorbell, jobTopic } from "../dispatch/doorbell.ts";
import type { Env } from "../env.ts";

const TERMINAL = new Set(jobsTable.TERMINAL);

/**
 * Yields the job now and again after every announcement, until it ends or `deadline` passes; yields `undefined`
 * when `idleMs` pass without one (an SSE stream sends a keep-alive then). One of the two bounds must be finite.
 */
export async function* followJob(
  env: Env,
  db: Db,
  tenantId: string,
  id: string,
  bounds: { deadline?: number; idleMs?: number },
): AsyncGenerator<jobsTable.Job | undefined> {
  const bell = doorbell(env, jobTopic(id));
  const deadline = bounds.deadline ?? Number.POSITIVE_INFINITY;
  for (;;) {
    // The sequence number is read before the row, so an announcement between the two is not missed.
    const seq = await bell.current();
    const job = await jobsTable.getJob(db, tenantId, id);
    if (!job) return;
    yield job;
    const left = deadline - Date.now();
    if (TERMINAL.has(job.status) || left <= 0) return;
    if (!(await bell.wait(seq, Math.min(left, bounds.idleMs ?? left)))) yield undefined;
  }
}

/** The job once it ended, or as it is after `seconds` (`Prefer: wait=N`, the OpenAI-compatible answer). */
export async function waitForJob(
  env: Env,
  db: Db,
  tenantId: string,
  id: string,
  seconds: number,
): Promise<jobsTable.Job | undefined> {
  let last: jobsTable.Job | undefined;
  for await (const job of followJob(env, db, tenantId, id, { deadline: Date.now() + seconds * 1000 }))
    last = job ?? last;
  return last;
}
