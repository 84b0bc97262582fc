import { jobsTable } from "@imagegen/db";
import { announce, type Announcer } from "../jobs/announce.ts";

/**
 * Requeues jobs whose runner stopped heartbeating (or fails them after their last attempt) and announces each:
 * idle runners hear of a requeued job, its watchers of the requeue or the failure. Run by cron; every lease runs the
 * same sweep in its own D1 batch (`jobsTable.expireAndLease`) and announces what it changed here.
 */
export async function expireLeases(to: Announcer, now = Date.now()): Promise<{ requeued: number; failed: number }> {
  return announceExpired(to, await jobsTable.expireLeases(to.db, now));
}

/** Announces the jobs an expiry sweep changed (`jobsTable.expireLeases`, or the lease's `expireAndLease`). */
export async function announceExpired(
  to: Announcer,
  changed: jobsTable.Job[],
): Promise<{ requeued: number; failed: number }> {
  await Promise.all(changed.map((job) => announce(to, job)));
  const failed = changed.filter((j) => j.status === "failed").length;
  return { requeued: changed.length - failed, failed };
}
