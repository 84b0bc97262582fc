import { and, eq, gte } from "drizzle-orm";
import type { Db } from "../index.ts";
import { usageCounters } from "../schema.ts";

export type UsageDay = typeof usageCounters.$inferSelect;

export const utcDay = (ms: number) => new Date(ms).toISOString().slice(0, 10);

export async function usageSince(db: Db, tenantId: string, fromDay: string): Promise<UsageDay[]> {
  return db
    .select()
    .from(usageCounters)
    .where(and(eq(usageCounters.tenantId, tenantId), gte(usageCounters.day, fromDay)))
    .orderBy(usageCounters.day);
}
