/** Tenant API keys: created by the operator (`/admin/v1`) and by tenants themselves (`/v1/keys`). */
import type { z } from "@hono/zod-openapi";
import { iso, type ApiKey, type CreateKeyBody } from "@imagegen/contracts";
import { apiKeysTable, type tenantsTable } from "@imagegen/db";
import type { Context } from "hono";
import { audit } from "../audit/log.ts";
import type { AppEnv } from "../context.ts";
import { ApiError } from "../errors.ts";
import { newSecret, sha256Hex } from "../lib/crypto.ts";
import { newId } from "../lib/ids.ts";
import { API_KEY_PREFIX, displayPrefix } from "./secrets.ts";

export function presentKey(k: apiKeysTable.ApiKey): z.infer<typeof ApiKey> {
  return {
    id: k.id,
    object: "api_key",
    tenant_id: k.tenantId,
    name: k.name,
    prefix: k.prefix,
    scopes: k.scopes,
    created_at: iso(k.createdAt)!,
    last_used_at: iso(k.lastUsedAt),
    expires_at: iso(k.expiresAt),
    revoked_at: iso(k.revokedAt),
  };
}

/**
 * Creates an API key within the tenant's cap on live keys (a tenant could otherwise mint keys without end); the
 * secret is returned once and only its hash is stored.
 */
export async function createKey(
  c: Context<AppEnv>,
  tenant: tenantsTable.Tenant,
  body: z.infer<typeof CreateKeyBody>,
  actor: string,
  /** The signed-in user who made it, if a person did. */
  userId?: string,
) {
  const tenantId = tenant.id;
  const secret = newSecret(API_KEY_PREFIX);
  const now = Date.now();
  const maxKeys = tenant.maxApiKeys ?? c.var.settings.defaultMaxApiKeys;
  const key = await apiKeysTable.insertKeyWithinCap(
    c.var.db,
    {
      id: newId("key", now),
      tenantId,
      userId: userId ?? null,
      name: body.name,
      prefix: displayPrefix(secret),
      hash: await sha256Hex(secret),
      scopes: body.scopes,
      createdAt: now,
      expiresAt: body.expires_in_days ? now + body.expires_in_days * 86_400_000 : null,
    },
    maxKeys,
  );
  if (!key) {
    // Not a 429: waiting does not help, and clients retry 429s.
    throw ApiError.forbidden(
      "api_key_limit_exceeded",
      `This tenant already has ${maxKeys} live API keys; revoke one first.`,
    );
  }
  await audit(c, {
    tenantId,
    actor,
    action: "api_key.create",
    target: key.id,
    details: { name: key.name, scopes: key.scopes },
  });
  return { ...presentKey(key), secret };
}
