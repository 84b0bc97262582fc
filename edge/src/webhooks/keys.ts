/**
 * The signing secrets as stored: the tenant's own (for a request's `webhook_url`) and each endpoint's, each a
 * sealed ring (see secrets.ts). Every read of a ring still in plain text writes it back sealed.
 */
import { webhooksTable, type Db } from "@imagegen/db";
import type { Env } from "../env.ts";
import { newWebhookSecret, openRing, rotatedRing, sealRing, type SecretRing } from "./secrets.ts";

/** A ring as the API shows it: the current secret, and until when the replaced one still signs. */
export function describeRing(ring: SecretRing, now = Date.now()): { secret: string; previousExpiresAt: number | null } {
  const previous = ring.slice(1).filter((k) => (k.expiresAt ?? 0) > now);
  return {
    secret: ring[0]!.secret,
    previousExpiresAt: previous.length ? Math.max(...previous.map((k) => k.expiresAt!)) : null,
  };
}

async function opened(
  env: Env,
  db: Db,
  table: "tenants" | "endpoints",
  owner: string,
  stored: string,
): Promise<SecretRing> {
  const { ring, plain } = await openRing(env.WEBHOOK_SECRET_KEY, owner, stored);
  if (plain)
    await webhooksTable.sealPlainSecret(db, table, owner, stored, await sealRing(env.WEBHOOK_SECRET_KEY, owner, ring));
  return ring;
}

/** The tenant's ring, made on first use. */
export async function tenantRing(env: Env, db: Db, tenantId: string): Promise<SecretRing> {
  const stored =
    (await webhooksTable.tenantSecret(db, tenantId)) ??
    (await webhooksTable.initTenantSecret(
      db,
      tenantId,
      await sealRing(env.WEBHOOK_SECRET_KEY, tenantId, [{ secret: newWebhookSecret() }]),
    ));
  return opened(env, db, "tenants", tenantId, stored);
}

export async function rotateTenantSecret(env: Env, db: Db, tenantId: string, graceMs: number): Promise<SecretRing> {
  const ring = rotatedRing(await tenantRing(env, db, tenantId), newWebhookSecret(), Date.now(), graceMs);
  await webhooksTable.setTenantSecret(db, tenantId, await sealRing(env.WEBHOOK_SECRET_KEY, tenantId, ring));
  return ring;
}

export const endpointRing = (env: Env, db: Db, e: webhooksTable.Endpoint): Promise<SecretRing> =>
  opened(env, db, "endpoints", e.id, e.secret);

export const sealNewRing = (env: Env, endpointId: string, secret: string): Promise<string> =>
  sealRing(env.WEBHOOK_SECRET_KEY, endpointId, [{ secret }]);

export async function rotateEndpointSecret(
  env: Env,
  db: Db,
  e: webhooksTable.Endpoint,
  graceMs: number,
): Promise<SecretRing> {
  const ring = rotatedRing(await endpointRing(env, db, e), newWebhookSecret(), Date.now(), graceMs);
  await webhooksTable.updateEndpoint(db, e.tenantId, e.id, {
    secret: await sealRing(env.WEBHOOK_SECRET_KEY, e.id, ring),
  });
  return ring;
}

/** Seals the secrets written in plain text before sealing existed (cron); returns how many it sealed. */
export async function sealPlainSecrets(env: Env, db: Db): Promise<number> {
  if (!env.WEBHOOK_SECRET_KEY) return 0;
  const plain = await webhooksTable.plainSecrets(db);
  await Promise.all([
    ...plain.tenants.map((t) => opened(env, db, "tenants", t.id, t.secret)),
    ...plain.endpoints.map((e) => opened(env, db, "endpoints", e.id, e.secret)),
  ]);
  return plain.tenants.length + plain.endpoints.length;
}
