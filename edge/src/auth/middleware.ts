import type { Scope } from "@imagegen/contracts/keys";
import type { MiddlewareHandler } from "hono";
import { apiKeysTable, type Db, runnersTable, sessionsTable } from "@imagegen/db";
import type { AppEnv, TenantAuth } from "../context.ts";
import { insufficientRole } from "../users/roles.ts";
import { authenticateSession, SESSION_IDLE_MS, sessionCookie } from "../users/sessions.ts";
import { ApiError } from "../errors.ts";
import { sha256Hex, timingSafeEqualHex } from "../lib/crypto.ts";
import { IsolateCache } from "../lib/isolate-cache.ts";
import { API_KEY_PREFIX, bearer, RUNNER_TOKEN_PREFIX } from "./secrets.ts";

/**
 * Tenant API: `Authorization: Bearer igk_…` (programs), else the dashboard's session cookie (people; CSRF-checked on
 * state changes, see edge/src/users/sessions.ts). Revoked, expired or unknown keys all fail the same way.
 */
export const tenantAuth = (): MiddlewareHandler<AppEnv> => async (c, next) => {
  const secret = bearer(c.req.header("authorization"));
  if (!secret) {
    const cookie = sessionCookie(c);
    if (cookie) {
      c.set("auth", await authenticateSession(c, cookie));
      return next();
    }
    throw ApiError.unauthenticated("Missing API key: send 'Authorization: Bearer <api key>' (or sign in).");
  }
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
  c.set("auth", { tenant: found.tenant, key: found.key, scopes: found.key.scopes, actor: found.key.id });
  // `last_used_at` is kept to the minute: a key in steady use costs no write per request.
  if (found.key.lastUsedAt === null || found.key.lastUsedAt < now - KEY_TOUCH_MS)
    c.executionCtx.waitUntil(apiKeysTable.touchKey(c.var.db, found.key.id, now, KEY_TOUCH_MS));
  await next();
};

/** The caller's key has `scope`, or the signed-in user's role gives it (else 403 `insufficient_role`). */
export function requireScope(c: { var: Pick<AppEnv["Variables"], "auth"> }, scope: Scope): void {
  const { scopes, user } = c.var.auth;
  if (scopes.includes(scope)) return;
  if (user) throw insufficientRole("admin");
  throw ApiError.forbidden("missing_scope", `This API key lacks the '${scope}' scope.`);
}

/** Whether the credential a request was made with still authenticates (long streams re-check it). */
export function stillAuthenticated(db: Db, auth: TenantAuth, now = Date.now()): Promise<boolean> {
  if (auth.session) return sessionsTable.isLive(db, auth.session.id, now, SESSION_IDLE_MS);
  return apiKeysTable.isLive(db, auth.tenant.id, auth.key!.id, now);
}

/** How stale an API key's `last_used_at` may be before a request writes it again. */
export const KEY_TOUCH_MS = 60_000;

/**
 * Runners found by token hash, kept for a few seconds: every runner call (lease, heartbeat, outputs, complete) would
 * otherwise read the runners table first. An operator's change (disable, rotate, revoke) clears this isolate's
 * entries at once; other isolates apply it within `RUNNER_AUTH_CACHE_MS` (infra/deploy/SCALING.md).
 */
export const RUNNER_AUTH_CACHE_MS = 5_000;
const runnersByToken = new IsolateCache<Awaited<ReturnType<typeof runnersTable.findRunnerByTokenHash>>>(
  RUNNER_AUTH_CACHE_MS,
);

/** After an operator changed a runner: this isolate authenticates runners from D1 again. */
export const forgetRunnerTokens = (env: { DB: D1Database }) => runnersByToken.clear(env.DB);

/** Runner API: `Authorization: Bearer igr_…`, a runner's own token, never a tenant key. */
export const runnerAuth = (): MiddlewareHandler<AppEnv> => async (c, next) => {
  const secret = bearer(c.req.header("authorization"));
  if (!secret) throw ApiError.unauthenticated("Missing runner token.");
  if (!secret.startsWith(`${RUNNER_TOKEN_PREFIX}_`)) {
    throw ApiError.unauthenticated("The runner API takes runner tokens, not API keys.");
  }
  const hash = await sha256Hex(secret);
  const runner = await runnersByToken.get(c.env.DB, hash, () => runnersTable.findRunnerByTokenHash(c.var.db, hash));
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
