import type { Scope } from "@imagegen/contracts/keys";
import type { MiddlewareHandler } from "hono";
import { apiKeysTable, runnersTable } from "@imagegen/db";
import type { AppEnv } from "../context.ts";
import { ApiError } from "../errors.ts";
import { sha256Hex, timingSafeEqualHex } from "../lib/crypto.ts";
import { API_KEY_PREFIX, bearer, RUNNER_TOKEN_PREFIX } from "./secrets.ts";

/** Tenant API: `Authorization: Bearer igk_…`. Revoked, expired or unknown keys all fail the same way. */
export const tenantAuth = (): MiddlewareHandler<AppEnv> => async (c, next) => {
  const secret = bearer(c.req.header("authorization"));
  if (!secret) throw ApiError.unauthenticated("Missing API key: send 'Authorization: Bearer <api key>'.");
  if (secret.startsWith(`${RUNNER_TOKEN_PREFIX}_`)) {
    throw ApiError.unauthenticated("A runner token cannot call the public API; use an API key.");
  }
  const found = secret.startsWith(`${API_KEY_PREFIX}_`)
    ? await apiKeysTable.findKeyByHash(c.var.db, await sha256Hex(secret))
    : undefined;
  const now = Date.now();
  if (!found) throw ApiError.unauthenticated("Invalid API key.");
  if (found.key.revokedAt !== null)
    throw new ApiError(401, "authentication_error", "api_key_revoked", "This API key was revoked.");
  if (found.key.expiresAt !== null && found.key.expiresAt <= now) {
    throw new ApiError(401, "authentication_error", "api_key_expired", "This API key has expired.");
  }
  if (found.tenant.status !== "active") throw ApiError.forbidden("tenant_suspended", "This tenant is suspended.");
  c.set("auth", { tenant: found.tenant, key: found.key });
  c.executionCtx.waitUntil(apiKeysTable.touchKey(c.var.db, found.key.id, now));
  await next();
};

export function requireScope(c: { var: AppEnv["Variables"] }, scope: Scope): void {
  if (!c.var.auth.key.scopes.includes(scope)) {
    throw ApiError.forbidden("missing_scope", `This API key lacks the '${scope}' scope.`);
  }
}

/** Runner API: `Authorization: Bearer igr_…`, a runner's own token, never a tenant key. */
export const runnerAuth = (): MiddlewareHandler<AppEnv> => async (c, next) => {
  const secret = bearer(c.req.header("authorization"));
  if (!secret) throw ApiError.unauthenticated("Missing runner token.");
  if (!secret.startsWith(`${RUNNER_TOKEN_PREFIX}_`)) {
    throw ApiError.unauthenticated("The runner API takes runner tokens, not API keys.");
  }
  const runner = await runnersTable.findRunnerByTokenHash(c.var.db, await sha256Hex(secret));
  if (!runner) throw ApiError.unauthenticated("Invalid runner token.");
  if (runner.status !== "active")
    throw new ApiError(401, "authentication_error", "runner_disabled", "This runner was disabled by the operator.");
  c.set("runner", runner);
  await next();
};

/** Admin API: the deployment's ADMIN_TOKEN secret. Without one configured, the admin API is closed. */
export const adminAuth = (): MiddlewareHandler<AppEnv> => async (c, next) => {
  const expected = c.env.ADMIN_TOKEN;
  if (!expected) throw ApiError.forbidden("admin_disabled", "The admin API is disabled: no ADMIN_TOKEN is configured.");
  const secret = bearer(c.req.header("authorization"));
  if (!secret) throw ApiError.unauthenticated("Missing admin token.");
  if (!timingSafeEqualHex(await sha256Hex(secret), await sha256Hex(expected))) {
    throw ApiError.unauthenticated("Invalid admin token.");
  }
  await next();
};
