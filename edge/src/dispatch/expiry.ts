import { jobsTable } from "@imagegen/db";
import { announce, type Announcer } from "../jobs/announce.ts";

/**
 * Requeues jobs whose runner stopped heartbeating (or fails them after their last attempt) and announces each:
 * idle runners hear of a requeued job, its watchers of the requeue or the failure. Run before every lease and by cron.
 */
export async function expireLeases(to: Announcer, now = Date.now()): Promise<{ requeued: number; failed: number }> {
  const changed = await jobsTable.expireLeases(to.db, now);
  await Promise.all(changed.map((job) => announce(to, job)));
  const failed = changed.filter((j) => j.status === "failed").length;
  return { requeued: changed.length - failed, failed };
}
