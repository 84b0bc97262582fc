import { jobsTable, type Db } from "@imagegen/db";
import { doorbell, jobTopic, QUEUE_TOPIC } from "./doorbell.ts";
import type { Env } from "../env.ts";
import { generationEnded } from "../webhooks/index.ts";

/**
 * Requeues jobs whose runner stopped heartbeating (or fails them after their last attempt), and wakes whoever
 * cares: idle runners for requeued jobs, waiting clients for failed ones. Run before every lease and by cron.
 */
export async function expireLeases(
  env: Env,
  db: Db,
  now = Date.now(),
  waitUntil: (p: Promise<unknown>) => void = () => {},
): Promise<{ requeued: number; failed: number }> {
  const changed = await jobsTable.expireLeases(db, now);
  const failed = changed.filter((j) => j.status === "failed");
  const requeued = changed.length - failed.length;
  if (requeued > 0) await doorbell(env, QUEUE_TOPIC).ring();
  await Promise.all(
    failed.map(async (j) => {
      await doorbell(env, jobTopic(j.id)).ring();
      const job = await jobsTable.getJobAnyTenant(db, j.id);
      if (job) await generationEnded(env, db, job, waitUntil);
    }),
  );
  return { requeued, failed: failed.length };
}
