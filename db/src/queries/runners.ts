import { and, eq, getTableColumns, isNull, sql } from "drizzle-orm";
import type { Db } from "../index.ts";
import { runners } from "../schema.ts";

export type Runner = typeof runners.$inferSelect;
export type NewRunner = typeof runners.$inferInsert;
export type RunnerWithLeases = Runner & { activeLeases: number };

export async function insertRunner(db: Db, runner: NewRunner): Promise<Runner> {
  const [row] = await db.insert(runners).values(runner).returning();
  return row!;
}

export async function findRunnerByTokenHash(db: Db, tokenHash: string): Promise<Runner | undefined> {
  return db.query.runners.findFirst({ where: eq(runners.tokenHash, tokenHash) });
}

/** The leases a runner holds at `now`: running jobs it leased whose deadline has not passed. */
const activeLeases = (now: number) =>
  // Spelled out: drizzle leaves columns unqualified in a one-table select, and both tables have an `id`.
  sql<number>`(SELECT count(*) FROM jobs l WHERE l.lease_owner = runners.id AND l.status = 'running' AND l.lease_expires_at >= ${now})`;

/** Every runner, revoked ones included (the operator's record), with the leases each holds now. */
export async function listRunners(db: Db, now: number): Promise<RunnerWithLeases[]> {
  return db
    .select({ ...getTableColumns(runners), activeLeases: activeLeases(now) })
    .from(runners)
    .orderBy(runners.createdAt);
}

export async function getRunner(db: Db, id: string, now: number): Promise<RunnerWithLeases | undefined> {
  const [row] = await db
    .select({ ...getTableColumns(runners), activeLeases: activeLeases(now) })
    .from(runners)
    .where(eq(runners.id, id));
  return row;
}

/** Changes a runner that is not revoked (status, token hash); a revoked runner stays as it is. */
export async function updateRunner(
  db: Db,
  id: string,
  patch: Partial<Pick<NewRunner, "status" | "tokenHash" | "revokedAt">>,
): Promise<boolean> {
  const rows = await db
    .update(runners)
    .set(patch)
    .where(and(eq(runners.id, id), isNull(runners.revokedAt)))
    .returning({ id: runners.id });
  return rows.length > 0;
}

/**
 * What a runner reported on its last lease or heartbeat: the edge routes jobs by its warm add-ons. Its capacity is
 * the operator's to set (at registration), so a lease's declared capacity is not stored: it can only lower it.
 */
export function reportRunner(db: Db, id: string, report: { warmAddons?: string[]; models?: string[] }, now: number) {
  return db
    .update(runners)
    .set({
      lastSeenAt: now,
      ...(report.warmAddons ? { warmAddons: report.warmAddons } : {}),
      ...(report.models ? { models: report.models } : {}),
    })
    .where(eq(runners.id, id));
}
