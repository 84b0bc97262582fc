import { eq } from "drizzle-orm";
import type { Db } from "../index.ts";
import { runners } from "../schema.ts";

export type Runner = typeof runners.$inferSelect;
export type NewRunner = typeof runners.$inferInsert;

export async function insertRunner(db: Db, runner: NewRunner): Promise<Runner> {
  const [row] = await db.insert(runners).values(runner).returning();
  return row!;
}

export async function findRunnerByTokenHash(db: Db, tokenHash: string): Promise<Runner | undefined> {
  return db.query.runners.findFirst({ where: eq(runners.tokenHash, tokenHash) });
}

/** What a runner reported on its last lease or heartbeat: the edge routes jobs by its warm add-ons. */
export function reportRunner(db: Db, id: string, report: { warmAddons?: string[]; models?: string[]; capacity?: number }, now: number) {
  return db
    .update(runners)
    .set({
      lastSeenAt: now,
      ...(report.warmAddons ? { warmAddons: report.warmAddons } : {}),
      ...(report.models ? { models: report.models } : {}),
      ...(report.capacity ? { capacity: report.capacity } : {}),
    })
    .where(eq(runners.id, id));
}
