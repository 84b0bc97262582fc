import { jobsTable, type Db } from "@imagegen/db";
import type { ObjectStore } from "./index.ts";

export const DEFAULT_RETENTION_DAYS = 30;

/** Deletes stored outputs older than their tenant's retention (cron), then marks their rows. */
export async function sweepRetention(store: ObjectStore, db: Db, now = Date.now()): Promise<number> {
  const expired = await jobsTable.imagesPastRetention(db, now, DEFAULT_RETENTION_DAYS);
  if (expired.length === 0) return 0;
  await store.delete(expired.map((i) => i.storageKey));
  await jobsTable.markImagesDeleted(db, expired.map((i) => i.id), now);
  return expired.length;
}
