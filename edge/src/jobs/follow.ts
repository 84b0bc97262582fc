/** The listening side of `announce`: follow a job through its doorbell instead of polling D1. */
import { jobsTable, type Db } from "@imagegen/db";
import { doorbell, jobTopic } from "../dispatch/doorbell.ts";
import type { Env } from "../env.ts";
import { mark } from "../middleware/server-timing.ts";

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
  // The sequence number is read before the row, so an announcement between the two is not missed; each wait then
  // hands over the number it woke at, which again comes before the next read.
  let seq = await bell.current();
  for (;;) {
    const job = await jobsTable.getJob(db, tenantId, id);
    if (!job) return;
    yield job;
    const left = deadline - Date.now();
    if (TERMINAL.has(job.status) || left <= 0) return;
    const woke = await bell.wait(seq, Math.min(left, bounds.idleMs ?? left));
    seq = woke.seq;
    if (!woke.rung) yield undefined;
    else mark("woken", id);
  }
}

/** A job as it ended (with its images), or as it was when the wait ran out. */
export interface WaitOutcome {
  job: jobsTable.Job;
  /** The job's images, read with it when it ended (absent when it had not ended). */
  images?: jobsTable.Image[];
}

/**
 * Waits until the job ends or `seconds` pass (`Prefer: wait=N`, the OpenAI-compatible answer). Only the end is read
 * from D1: a ring whose note says the job goes on (acknowledged, progress) costs no read. `from`: the job as its
 * creator holds it and the doorbell's number after it was announced (`submitGeneration`), so the wait starts
 * without reading either again. Undefined when the job does not exist (for this tenant).
 */
export async function waitForEnd(
  env: Env,
  db: Db,
  tenantId: string,
  id: string,
  seconds: number,
  from?: { job: jobsTable.Job; seq: number },
): Promise<WaitOutcome | undefined> {
  const bell = doorbell(env, jobTopic(id));
  const deadline = Date.now() + seconds * 1000;
  let seq: number;
  let job: jobsTable.Job | undefined;
  if (from) ({ job, seq } = from);
  else {
    seq = await bell.current();
    job = await jobsTable.getJob(db, tenantId, id);
  }
  for (;;) {
    if (!job) return undefined;
    if (TERMINAL.has(job.status)) break;
    const left = deadline - Date.now();
    if (left <= 0) return { job };
    // Only the end wakes this wait: rings that say the job goes on (acknowledged, progress) pass it by.
    const woke = await bell.wait(seq, left, true);
    seq = woke.seq;
    mark("woken", id);
    // Told that the job goes on (a doorbell that wakes on every ring): nothing to read. No note (an older ring), a
    // final one, or a timeout: read it.
    if (woke.rung && woke.note?.status && !woke.note.final) continue;
    if (woke.rung && woke.note?.final) {
      const ended = await jobsTable.getJobWithImages(db, tenantId, id);
      if (ended && TERMINAL.has(ended.job.status)) {
        mark("ended", id);
        return ended;
      }
      job = ended?.job ?? job;
      continue;
    }
    job = (await jobsTable.getJob(db, tenantId, id)) ?? job;
  }
  mark("ended", id);
  return { job };
}

/** The job once it ended, or as it is after `seconds` (`Prefer: wait=N`, the OpenAI-compatible answer). */
export async function waitForJob(
  env: Env,
  db: Db,
  tenantId: string,
  id: string,
  seconds: number,
): Promise<jobsTable.Job | undefined> {
  return (await waitForEnd(env, db, tenantId, id, seconds))?.job;
}
