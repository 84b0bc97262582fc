import { sql } from "drizzle-orm";
import type { Db } from "../index.ts";
import type { usageCounters } from "../schema.ts";

export type UsageDay = typeof usageCounters.$inferSelect;

export const utcDay = (ms: number) => new Date(ms).toISOString().slice(0, 10);

export interface UsageRow {
  day: string;
  keyId: string | null;
  keyName: string | null;
  generations: number;
  images: number;
  failed: number;
}

/**
 * Generations made since `since`, per UTC day and per API key (null: made from the dashboard by a signed-in user).
 * Images are those of succeeded generations. Read from the jobs themselves, so it never disagrees with them.
 */
export async function usageSince(db: Db, tenantId: string, since: number): Promise<UsageRow[]> {
  return db.all<UsageRow>(sql`
    SELECT strftime('%Y-%m-%d', j.created_at / 1000, 'unixepoch') AS day, j.api_key_id AS keyId, k.name AS keyName,
      count(*) AS generations,
      coalesce(sum(CASE WHEN j.status = 'succeeded' THEN j.image_count ELSE 0 END), 0) AS images,
      coalesce(sum(CASE WHEN j.status = 'failed' THEN 1 ELSE 0 END), 0) AS failed
    FROM jobs j LEFT JOIN api_keys k ON k.id = j.api_key_id
    WHERE j.tenant_id = ${tenantId} AND j.created_at >= ${since}
    GROUP BY day, j.api_key_id
    ORDER BY day`);
}

/**
 * The add-on versions runners hold warm now (active runners seen since `seenSince`), with how many runners hold each,
 * limited to the add-ons `tenantId` may see: its own and public ones, never another tenant's private add-on.
 */
export async function warmAddons(db: Db, tenantId: string, seenSince: number) {
  return db.all<{ ref: string; runners: number }>(sql`
    SELECT w.value AS ref, count(DISTINCT r.id) AS runners
    FROM runners r, json_each(r.warm_addons) w
    JOIN addons a ON a.id = CASE WHEN instr(w.value, '@') > 0 THEN substr(w.value, 1, instr(w.value, '@') - 1) ELSE w.value END
    WHERE r.status = 'active' AND r.revoked_at IS NULL AND r.last_seen_at >= ${seenSince}
      AND a.deleted_at IS NULL AND (a.tenant_id = ${tenantId} OR a.visibility = 'public')
    GROUP BY w.value
    ORDER BY w.value`);
}
