import { and, count, eq, gte, lt, max, ne } from "drizzle-orm";
import type { Db } from "../index.ts";
import { loginAttempts, sessions, tenants, users } from "../schema.ts";

export type Session = typeof sessions.$inferSelect;
export type NewSession = typeof sessions.$inferInsert;

export async function insertSession(db: Db, session: NewSession): Promise<Session> {
  const [row] = await db.insert(sessions).values(session).returning();
  return row!;
}

/** The session with this token hash, its user and tenant, whatever their state: the caller checks expiry. */
export async function findSessionByHash(db: Db, tokenHash: string) {
  const [row] = await db
    .select({ session: sessions, user: users, tenant: tenants })
    .from(sessions)
    .innerJoin(users, eq(users.id, sessions.userId))
    .innerJoin(tenants, eq(tenants.id, sessions.tenantId))
    .where(eq(sessions.tokenHash, tokenHash))
    .limit(1);
  return row;
}

/** Slides the idle expiry, writing at most once a minute per session. */
export async function touchSession(db: Db, id: string, now: number): Promise<void> {
  await db
    .update(sessions)
    .set({ lastSeenAt: now })
    .where(and(eq(sessions.id, id), lt(sessions.lastSeenAt, now - 60_000)));
}

/** Whether the session still authenticates at `now` (a stream opened with it ends when it no longer does). */
export async function isLive(db: Db, id: string, now: number, idleMs: number): Promise<boolean> {
  const [row] = await db
    .select({ id: sessions.id })
    .from(sessions)
    .innerJoin(tenants, eq(tenants.id, sessions.tenantId))
    .where(
      and(
        eq(sessions.id, id),
        gte(sessions.expiresAt, now),
        gte(sessions.lastSeenAt, now - idleMs),
        eq(tenants.status, "active"),
      ),
    )
    .limit(1);
  return row !== undefined;
}

export async function deleteSession(db: Db, id: string): Promise<void> {
  await db.delete(sessions).where(eq(sessions.id, id));
}

/** Signs a user out everywhere, or everywhere but `keep` (the session that changed the password). */
export async function deleteUserSessions(db: Db, userId: string, keep?: string): Promise<number> {
  const rows = await db
    .delete(sessions)
    .where(and(eq(sessions.userId, userId), keep ? ne(sessions.id, keep) : undefined))
    .returning({ id: sessions.id });
  return rows.length;
}

/** Failed sign-ins since `since` for an email and for a client address, with the latest of each. */
export async function recentFailures(db: Db, email: string, ip: string, since: number) {
  const [byEmail] = await db
    .select({ n: count(), last: max(loginAttempts.createdAt) })
    .from(loginAttempts)
    .where(and(eq(loginAttempts.email, email), gte(loginAttempts.createdAt, since)));
  const [byIp] = await db
    .select({ n: count(), last: max(loginAttempts.createdAt) })
    .from(loginAttempts)
    .where(and(eq(loginAttempts.ip, ip), gte(loginAttempts.createdAt, since)));
  return {
    email: { count: byEmail?.n ?? 0, last: byEmail?.last ?? 0 },
    ip: { count: byIp?.n ?? 0, last: byIp?.last ?? 0 },
  };
}

/** Records a failure and prunes rows older than `pruneBefore` (they no longer count), so the table stays small. */
export async function recordFailure(db: Db, attempt: typeof loginAttempts.$inferInsert, pruneBefore: number) {
  await db.insert(loginAttempts).values(attempt);
  await db.delete(loginAttempts).where(lt(loginAttempts.createdAt, pruneBefore));
}

/** A successful sign-in forgives the email's failures (not the address's: one address may try many emails). */
export async function clearFailures(db: Db, email: string): Promise<void> {
  await db.delete(loginAttempts).where(eq(loginAttempts.email, email));
}
