/**
 * Dashboard sessions. The cookie `ig_session` holds a random token (stored hashed, like API keys): HttpOnly so
 * scripts cannot read it, SameSite=Strict so other sites' requests do not carry it, Secure when served over HTTPS.
 * A session ends after 7 idle days or 30 days in all. Every state change made with the cookie must also send the
 * session's CSRF token in `X-CSRF-Token` and, when the browser says where it comes from, this edge's Origin.
 */
import { sessionsTable, type tenantsTable, type usersTable } from "@imagegen/db";
import type { Context } from "hono";
import { deleteCookie, getCookie, setCookie } from "hono/cookie";
import type { AppEnv } from "../context.ts";
import { ApiError } from "../errors.ts";
import { newSecret, sha256Hex, timingSafeEqualHex } from "../lib/crypto.ts";
import { newId } from "../lib/ids.ts";
import { scopesForRole } from "./roles.ts";

export const SESSION_COOKIE = "ig_session";
export const SESSION_TOKEN_PREFIX = "igs";
export const SESSION_IDLE_MS = 7 * 86_400_000;
export const SESSION_MAX_MS = 30 * 86_400_000;
const SAFE_METHODS = new Set(["GET", "HEAD", "OPTIONS"]);

const isHttps = (c: Context<AppEnv>) => new URL(c.req.url).protocol === "https:";
/** This edge's own origin, as the browser names it in `Origin`. */
export const ownOrigin = (c: Context<AppEnv>) => new URL(c.req.url).origin;

/** Starts a session for a user who just proved who they are, and sets its cookie. */
export async function startSession(c: Context<AppEnv>, user: usersTable.User, now = Date.now()) {
  const token = newSecret(SESSION_TOKEN_PREFIX);
  const session = await sessionsTable.insertSession(c.var.db, {
    id: newId("ses", now),
    tokenHash: await sha256Hex(token),
    userId: user.id,
    tenantId: user.tenantId,
    csrfToken: newSecret("csrf"),
    createdAt: now,
    lastSeenAt: now,
    expiresAt: now + SESSION_MAX_MS,
  });
  setCookie(c, SESSION_COOKIE, token, {
    path: "/",
    httpOnly: true,
    sameSite: "Strict",
    secure: isHttps(c),
    maxAge: SESSION_MAX_MS / 1000,
  });
  return session;
}

export function clearSessionCookie(c: Context<AppEnv>): void {
  deleteCookie(c, SESSION_COOKIE, { path: "/", httpOnly: true, sameSite: "Strict", secure: isHttps(c) });
}

export const sessionCookie = (c: Context<AppEnv>) => getCookie(c, SESSION_COOKIE);

/**
 * The tenant auth a session cookie gives, or an error: unknown, expired (idle or absolute) and a suspended tenant fail
 * as a bad key does. State changes are checked against CSRF and Origin here, before any handler runs.
 */
export async function authenticateSession(c: Context<AppEnv>, token: string, now = Date.now()) {
  const found = token.startsWith(`${SESSION_TOKEN_PREFIX}_`)
    ? await sessionsTable.findSessionByHash(c.var.db, await sha256Hex(token))
    : undefined;
  if (!found || found.session.expiresAt <= now || found.session.lastSeenAt + SESSION_IDLE_MS <= now) {
    clearSessionCookie(c);
    throw new ApiError(401, "authentication_error", "invalid_credentials", "Not signed in, or the session expired.");
  }
  if (found.tenant.status !== "active") throw ApiError.forbidden("tenant_suspended", "This tenant is suspended.");
  if (!SAFE_METHODS.has(c.req.method)) checkCsrf(c, found.session.csrfToken);
  c.executionCtx.waitUntil(sessionsTable.touchSession(c.var.db, found.session.id, now));
  return {
    tenant: found.tenant as tenantsTable.Tenant,
    user: found.user,
    session: found.session,
    scopes: scopesForRole(found.user.role),
    actor: found.user.id,
  };
}

/** A cookie-authenticated state change must come from this edge's pages: the right Origin and the session's token. */
function checkCsrf(c: Context<AppEnv>, expected: string): void {
  const origin = c.req.header("origin");
  if (origin !== undefined && origin !== ownOrigin(c)) {
    throw ApiError.forbidden("csrf_failed", `Cross-origin request refused: Origin '${origin}' is not this API's.`);
  }
  const sent = c.req.header("x-csrf-token") ?? "";
  // Compared as fixed-length hashes would be; both are short random strings, so compare in constant time directly.
  if (!timingSafeEqualHex(sent, expected)) {
    throw ApiError.forbidden(
      "csrf_failed",
      "Missing or wrong X-CSRF-Token header (from signin or GET /v1/auth/session).",
    );
  }
}
