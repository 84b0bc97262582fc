import { and, desc, eq, gt, isNull, lt, or, sql } from "drizzle-orm";
import type { Db } from "../index.ts";
import { apiKeys, tenants } from "../schema.ts";

export type ApiKey = typeof apiKeys.$inferSelect;
export type NewApiKey = typeof apiKeys.$inferInsert;

/** Keys that still authenticate at `now`: not revoked, not expired. They count against the tenant's key cap. */
const live = (tenantId: string, now: number) =>
  and(
    eq(apiKeys.tenantId, tenantId),
    isNull(apiKeys.revokedAt),
    or(isNull(apiKeys.expiresAt), gt(apiKeys.expiresAt, now)),
  );

/**
 * Inserts a key only while the tenant holds fewer than `maxKeys` live keys, in one statement, so concurrent creates
 * cannot slip past the cap. Undefined when at the cap.
 */
export async function insertKeyWithinCap(
  db: Db,
  key: NewApiKey & { createdAt: number },
  maxKeys: number,
): Promise<ApiKey | undefined> {
  const under = sql`(SELECT count(*) FROM ${apiKeys} WHERE ${live(key.tenantId, key.createdAt)}) < ${maxKeys}`;
  await db.run(sql`INSERT INTO api_keys (id, tenant_id, user_id, name, prefix, hash, scopes, created_at, expires_at)
    SELECT ${key.id}, ${key.tenantId}, ${key.userId ?? null}, ${key.name}, ${key.prefix}, ${key.hash}, ${JSON.stringify(key.scopes)},
      ${key.createdAt}, ${key.expiresAt ?? null}
    WHERE ${under}`);
  return db.query.apiKeys.findFirst({ where: eq(apiKeys.id, key.id) });
}

/** The key with this hash and its tenant, whatever their state: the caller decides what revoked or expired means. */
export async function findKeyByHash(db: Db, hash: string) {
  const [row] = await db
    .select({ key: apiKeys, tenant: tenants })
    .from(apiKeys)
    .innerJoin(tenants, eq(tenants.id, apiKeys.tenantId))
    .where(eq(apiKeys.hash, hash))
    .limit(1);
  return row;
}

/** Records use at most once a minute per key, so authentication does not write on every request. */
export async function touchKey(db: Db, id: string, now: number, staleMs = 60_000): Promise<void> {
  await db
    .update(apiKeys)
    .set({ lastUsedAt: now })
    .where(and(eq(apiKeys.id, id), or(isNull(apiKeys.lastUsedAt), lt(apiKeys.lastUsedAt, now - staleMs))));
}

export async function listKeys(db: Db, tenantId: string): Promise<ApiKey[]> {
  return db.select().from(apiKeys).where(eq(apiKeys.tenantId, tenantId)).orderBy(desc(apiKeys.createdAt));
}

/** Whether the key still authenticates now (a stream opened with it ends when it no longer does). */
export async function isLive(db: Db, tenantId: string, id: string, now: number): Promise<boolean> {
  const [row] = await db
    .select({ id: apiKeys.id })
    .from(apiKeys)
    .innerJoin(tenants, eq(tenants.id, apiKeys.tenantId))
    .where(and(eq(apiKeys.id, id), live(tenantId, now), eq(tenants.status, "active")))
    .limit(1);
  return row !== undefined;
}

export async function revokeKey(db: Db, tenantId: string, id: string, now: number): Promise<ApiKey | undefined> {
  const [row] = await db
    .update(apiKeys)
    .set({ revokedAt: now })
    .where(and(eq(apiKeys.id, id), eq(apiKeys.tenantId, tenantId), isNull(apiKeys.revokedAt)))
    .returning();
  return row ?? db.query.apiKeys.findFirst({ where: and(eq(apiKeys.id, id), eq(apiKeys.tenantId, tenantId)) });
}
