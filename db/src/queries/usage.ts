import { usageCounters } from "../schema.ts";

export type UsageDay = typeof usageCounters.$inferSelect;

export const utcDay = (ms: number) => new Date(ms).toISOString().slice(0, 10);
