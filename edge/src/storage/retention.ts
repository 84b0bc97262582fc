import { addonsTable, jobsTable, type Db } from "@imagegen/db";
import { addonUploadKey, type ObjectStore } from "./index.ts";

export const DEFAULT_RETENTION_DAYS = 30;

/** Deletes stored outputs older than their tenant's retention (cron), then marks their rows. */
export async function sweepRetention(store: ObjectStore, db: Db, now = Date.now()): Promise<number> {
  const expired = await jobsTable.imagesPastRetention(db, now, DEFAULT_RETENTION_DAYS);
  if (expired.length === 0) return 0;
  await store.delete(expired.map((i) => i.storageKey));
  await jobsTable.markImagesDeleted(
    db,
    expired.map((i) => i.id),
    now,
  );
  return expired.length;
}

/**
 * How long after a job ends its stray outputs are swept: a runner still uploading for a lease that just ended (its
 * URLs live as long as the lease) has finished by then.
 */
export const OUTPUT_SWEEP_GRACE_MS = 5 * 60_000;
/** How long after an add-on is deleted or rejected its files go: presigned GETs handed to runners (an hour) expire. */
export const ADDON_SWEEP_GRACE_MS = 65 * 60_000;
/**
 * Each cron run (every minute) sweeps what ended in the window this long before its grace: anything is swept by
 * several runs (deletes are idempotent), so a missed run loses nothing, with no "swept" column to keep.
 */
export const SWEEP_WINDOW_MS = 10 * 60_000;

/** Job output prefix: every lease's images of one job live under it (`outputKey`). */
const jobOutputs = (tenantId: string, jobId: string) => `tenants/${tenantId}/outputs/${jobId}/`;

/**
 * Deletes stored objects nothing references (cron): the images a canceled job's runner uploaded, those of leases that
 * did not complete (a runner that lost its lease, a lying or interrupted upload), and the files of add-ons deleted
 * or versions rejected. Returns how many objects it deleted.
 */
export async function sweepOrphans(store: ObjectStore, db: Db, now = Date.now()): Promise<number> {
  let deleted = 0;
  const ended = await jobsTable.endedJobsWithImages(
    db,
    now - OUTPUT_SWEEP_GRACE_MS - SWEEP_WINDOW_MS,
    now - OUTPUT_SWEEP_GRACE_MS,
  );
  for (const job of ended) {
    const keep = new Set(job.keep);
    const stray = (await store.list(jobOutputs(job.tenantId, job.id))).filter((k) => !keep.has(k));
    await store.delete(stray);
    deleted += stray.length;
  }
  const files = await addonsTable.deadAddonFiles(
    db,
    now - ADDON_SWEEP_GRACE_MS - SWEEP_WINDOW_MS,
    now - ADDON_SWEEP_GRACE_MS,
  );
  const addonKeys = files.flatMap((k) => [k, addonUploadKey(k)]);
  const present = (await Promise.all(addonKeys.map(async (k) => ((await store.head(k)) ? k : null)))).filter(
    (k): k is string => k !== null,
  );
  await store.delete(present);
  return deleted + present.length;
}
