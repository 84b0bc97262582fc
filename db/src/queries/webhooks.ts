import { and, desc, eq, isNull, lte } from "drizzle-orm";
import type { Db } from "../index.ts";
import { tenants, webhookDeliveries } from "../schema.ts";

export type Delivery = typeof webhookDeliveries.$inferSelect;
export type NewDelivery = typeof webhookDeliveries.$inferInsert;

/** Waits before attempt n+1 of a failed delivery; after the last, the delivery is failed for good. */
export const RETRY_BACKOFF_MS = [10_000, 60_000, 300_000, 1_800_000, 7_200_000];
export const MAX_DELIVERY_ATTEMPTS = RETRY_BACKOFF_MS.length + 1;

export async function insertDelivery(db: Db, d: NewDelivery): Promise<Delivery> {
  const [row] = await db.insert(webhookDeliveries).values(d).returning();
  return row!;
}

export async function dueDeliveries(db: Db, now: number, limit = 50): Promise<Delivery[]> {
  return db
    .select()
    .from(webhookDeliveries)
    .where(and(eq(webhookDeliveries.status, "pending"), lte(webhookDeliveries.nextAttemptAt, now)))
    .orderBy(webhookDeliveries.nextAttemptAt)
    .limit(limit);
}

/**
 * Records one attempt. Guarded by the attempt count the caller saw, so two deliverers racing on one delivery
 * record it once.
 */
export async function recordAttempt(db: Db, d: Delivery, outcome: { ok: boolean; status?: number; error?: string }, now: number): Promise<Delivery | undefined> {
  const attempts = d.attempts + 1;
  const done = outcome.ok || attempts >= MAX_DELIVERY_ATTEMPTS;
  const [row] = await db
    .update(webhookDeliveries)
    .set({
      attempts,
      status: outcome.ok ? "delivered" : done ? "failed" : "pending",
      nextAttemptAt: done ? null : now + RETRY_BACKOFF_MS[attempts - 1]!,
      lastResponseStatus: outcome.status ?? null,
      lastError: outcome.ok ? null : (outcome.error ?? `HTTP ${outcome.status}`).slice(0, 500),
    })
    .where(and(eq(webhookDeliveries.id, d.id), eq(webhookDeliveries.attempts, d.attempts)))
    .returning();
  return row;
}

export async function listDeliveries(db: Db, tenantId: string, limit = 50): Promise<Delivery[]> {
  return db.select().from(webhookDeliveries).where(eq(webhookDeliveries.tenantId, tenantId)).orderBy(desc(webhookDeliveries.id)).limit(limit);
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

/** The tenant's signing secret, made by `make` on first use (only one writer wins). */
export async function webhookSecret(db: Db, tenantId: string, make: () => string): Promise<string> {
  const t = await db.query.tenants.findFirst({ where: eq(tenants.id, tenantId) });
  if (t?.webhookSecret) return t.webhookSecret;
  await db.update(tenants).set({ webhookSecret: make() }).where(and(eq(tenants.id, tenantId), isNull(tenants.webhookSecret)));
  const again = await db.query.tenants.findFirst({ where: eq(tenants.id, tenantId) });
  return again!.webhookSecret!;
}

export async function rotateWebhookSecret(db: Db, tenantId: string, secret: string): Promise<void> {
  await db.update(tenants).set({ webhookSecret: secret }).where(eq(tenants.id, tenantId));
}
