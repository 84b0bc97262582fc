import { and, desc, eq, isNull, like, lte } from "drizzle-orm";
import { rowsOf } from "../batch.ts";
import type { Db } from "../index.ts";
import { tenants, webhookDeliveries, webhookEndpoints } from "../schema.ts";

export type Delivery = typeof webhookDeliveries.$inferSelect;
export type NewDelivery = typeof webhookDeliveries.$inferInsert;
export type Endpoint = typeof webhookEndpoints.$inferSelect;
export type NewEndpoint = typeof webhookEndpoints.$inferInsert;

// Deliveries

export async function insertDeliveries(db: Db, ds: NewDelivery[]): Promise<Delivery[]> {
  return ds.length ? db.insert(webhookDeliveries).values(ds).returning() : [];
}

export async function getDelivery(db: Db, id: string): Promise<Delivery | undefined> {
  return db.query.webhookDeliveries.findFirst({ where: eq(webhookDeliveries.id, id) });
}

/** Pending deliveries due before `before` (the cron re-arms those whose timer was lost). */
export async function overdueDeliveries(db: Db, before: number, limit = 100): Promise<Delivery[]> {
  return db
    .select()
    .from(webhookDeliveries)
    .where(and(eq(webhookDeliveries.status, "pending"), lte(webhookDeliveries.nextAttemptAt, before)))
    .orderBy(webhookDeliveries.nextAttemptAt)
    .limit(limit);
}

/**
 * Records one attempt: `retryAt` null means no further attempt (delivered, or given up). Guarded by the attempt
 * count the caller saw, so two deliverers racing on one delivery record it once.
 */
export async function recordAttempt(
  db: Db,
  d: Delivery,
  outcome: { ok: boolean; status?: number; error?: string },
  retryAt: number | null,
): Promise<Delivery | undefined> {
  const [row] = await db
    .update(webhookDeliveries)
    .set({
      attempts: d.attempts + 1,
      status: outcome.ok ? "delivered" : retryAt === null ? "failed" : "pending",
      nextAttemptAt: outcome.ok ? null : retryAt,
      lastResponseStatus: outcome.status ?? null,
      lastError: outcome.ok ? null : (outcome.error ?? `HTTP ${outcome.status}`).slice(0, 500),
    })
    .where(and(eq(webhookDeliveries.id, d.id), eq(webhookDeliveries.attempts, d.attempts)))
    .returning();
  return row;
}

export async function listDeliveries(
  db: Db,
  tenantId: string,
  opts: { endpointId?: string; limit?: number } = {},
): Promise<Delivery[]> {
  const where = opts.endpointId
    ? and(eq(webhookDeliveries.tenantId, tenantId), eq(webhookDeliveries.endpointId, opts.endpointId))
    : eq(webhookDeliveries.tenantId, tenantId);
  return db
    .select()
    .from(webhookDeliveries)
    .where(where)
    .orderBy(desc(webhookDeliveries.id))
    .limit(opts.limit ?? 50);
}

/** Sends a delivery again (whatever its state), now. */
export async function redeliver(db: Db, tenantId: string, id: string, now: number): Promise<Delivery | undefined> {
  const [row] = await db
    .update(webhookDeliveries)
    .set({ status: "pending", nextAttemptAt: now })
    .where(and(eq(webhookDeliveries.id, id), eq(webhookDeliveries.tenantId, tenantId)))
    .returning();
  return row;
}

// Endpoints (their `secret` column holds a sealed secret ring; the edge seals and opens it)

export async function insertEndpoint(db: Db, e: NewEndpoint): Promise<Endpoint> {
  const [row] = await db.insert(webhookEndpoints).values(e).returning();
  return row!;
}

export async function getEndpoint(db: Db, tenantId: string, id: string): Promise<Endpoint | undefined> {
  return db.query.webhookEndpoints.findFirst({
    where: and(eq(webhookEndpoints.id, id), eq(webhookEndpoints.tenantId, tenantId)),
  });
}

export async function listEndpoints(db: Db, tenantId: string): Promise<Endpoint[]> {
  return db.select().from(webhookEndpoints).where(eq(webhookEndpoints.tenantId, tenantId)).orderBy(webhookEndpoints.id);
}

/** The enabled endpoints of a tenant that subscribed to `event`. */
export async function endpointsFor(db: Db, tenantId: string, event: Endpoint["events"][number]): Promise<Endpoint[]> {
  return subscribed(await liveEndpoints(db, tenantId), event);
}

/** A tenant's live endpoints, as a query another call can put in its own batch (`endpointsFrom` reads the answer). */
export const liveEndpoints = (db: Db, tenantId: string) =>
  db
    .select()
    .from(webhookEndpoints)
    .where(and(eq(webhookEndpoints.tenantId, tenantId), isNull(webhookEndpoints.disabledAt)));

/** The endpoints a batched `liveEndpoints` answered that subscribe to `event`. */
export const endpointsFrom = (result: { results?: unknown[] } | undefined, event: Endpoint["events"][number]) =>
  subscribed(rowsOf(webhookEndpoints, result), event);

const subscribed = (rows: Endpoint[], event: Endpoint["events"][number]) =>
  rows.filter((e) => e.events.includes(event));

export async function updateEndpoint(
  db: Db,
  tenantId: string,
  id: string,
  patch: Partial<Pick<NewEndpoint, "url" | "events" | "disabledAt" | "secret">>,
): Promise<Endpoint | undefined> {
  const [row] = await db
    .update(webhookEndpoints)
    .set(patch)
    .where(and(eq(webhookEndpoints.id, id), eq(webhookEndpoints.tenantId, tenantId)))
    .returning();
  return row;
}

export async function deleteEndpoint(db: Db, tenantId: string, id: string): Promise<boolean> {
  const rows = await db
    .delete(webhookEndpoints)
    .where(and(eq(webhookEndpoints.id, id), eq(webhookEndpoints.tenantId, tenantId)))
    .returning({ id: webhookEndpoints.id });
  return rows.length > 0;
}

// The tenant's own secret (signs deliveries to a request's `webhook_url`), a sealed ring like an endpoint's

export async function tenantSecret(db: Db, tenantId: string): Promise<string | null> {
  const t = await db.query.tenants.findFirst({ where: eq(tenants.id, tenantId), columns: { webhookSecret: true } });
  return t?.webhookSecret ?? null;
}

/** Stores the tenant's first secret unless another writer did first; returns what is stored. */
export async function initTenantSecret(db: Db, tenantId: string, sealed: string): Promise<string> {
  await db
    .update(tenants)
    .set({ webhookSecret: sealed })
    .where(and(eq(tenants.id, tenantId), isNull(tenants.webhookSecret)));
  return (await tenantSecret(db, tenantId))!;
}

export async function setTenantSecret(db: Db, tenantId: string, sealed: string): Promise<void> {
  await db.update(tenants).set({ webhookSecret: sealed }).where(eq(tenants.id, tenantId));
}

/** Secrets still stored in plain text (written before sealing), for the cron to seal. */
export async function plainSecrets(
  db: Db,
  limit = 100,
): Promise<{ tenants: Array<{ id: string; secret: string }>; endpoints: Array<{ id: string; secret: string }> }> {
  const ts = await db
    .select({ id: tenants.id, secret: tenants.webhookSecret })
    .from(tenants)
    .where(like(tenants.webhookSecret, "whsec%"))
    .limit(limit);
  const es = await db
    .select({ id: webhookEndpoints.id, secret: webhookEndpoints.secret })
    .from(webhookEndpoints)
    .where(like(webhookEndpoints.secret, "whsec%"))
    .limit(limit);
  return { tenants: ts.map((t) => ({ id: t.id, secret: t.secret! })), endpoints: es };
}

/** Replaces a plain secret with its sealed form, unless it changed meanwhile. */
export async function sealPlainSecret(
  db: Db,
  table: "tenants" | "endpoints",
  id: string,
  plain: string,
  sealed: string,
): Promise<void> {
  if (table === "tenants")
    await db
      .update(tenants)
      .set({ webhookSecret: sealed })
      .where(and(eq(tenants.id, id), eq(tenants.webhookSecret, plain)));
  else
    await db
      .update(webhookEndpoints)
      .set({ secret: sealed })
      .where(and(eq(webhookEndpoints.id, id), eq(webhookEndpoints.secret, plain)));
}
