/**
 * Signing in to the dashboard (see edge/src/users/README.md): sign-in and sign-up need no credential (app.ts lets
 * them through) and are slowed by the lockout; the rest act on the caller's session.
 */
import { createRoute, type z } from "@hono/zod-openapi";
import {
  ChangePasswordBody,
  errorResponses,
  PASSWORD_MAX,
  PASSWORD_MIN,
  Session,
  SignInBody,
  SignUpBody,
} from "@imagegen/contracts";
import { invitesTable, sessionsTable, type tenantsTable, usersTable } from "@imagegen/db";
import type { Context } from "hono";
import { audit } from "../audit/log.ts";
import { type AppEnv, router } from "../context.ts";
import { ApiError } from "../errors.ts";
import { sha256Hex } from "../lib/crypto.ts";
import { newId } from "../lib/ids.ts";
import { assertNotLocked, recordFailure } from "../users/lockout.ts";
import { dummyHash, hashPassword, verifyPassword } from "../users/password.ts";
import { presentUser } from "../users/present.ts";
import { clearSessionCookie, startSession } from "../users/sessions.ts";

const json = <T extends z.ZodType>(schema: T) => ({ content: { "application/json": { schema } }, required: true });
const sessionAnswer = {
  description: "Signed in (sets the ig_session cookie)",
  content: { "application/json": { schema: Session } },
};

function assertStrong(password: string, param: string): void {
  if (password.length < PASSWORD_MIN || password.length > PASSWORD_MAX) {
    throw ApiError.invalid(
      "weak_password",
      `The password must be ${PASSWORD_MIN} to ${PASSWORD_MAX} characters long.`,
      param,
    );
  }
}

function sessionBody(user: usersTable.User, tenant: tenantsTable.Tenant, csrfToken: string | null) {
  return { user: presentUser(user), tenant: { id: tenant.id, name: tenant.name }, csrf_token: csrfToken };
}

/** The signed-in user and session, for the routes that act on one (an API key has neither). */
function requireSession(c: Context<AppEnv>) {
  const { user, session } = c.var.auth;
  if (!user || !session) throw ApiError.forbidden("session_required", "This needs a signed-in user, not an API key.");
  return { user, session };
}

const WRONG = () => ApiError.unauthenticated("Wrong email or password.");

export const auth = router()
  .openapi(
    createRoute({
      method: "post",
      path: "/auth/signin",
      operationId: "signIn",
      tags: ["auth"],
      summary: "Sign in with email and password (dashboard); sets the session cookie",
      security: [],
      request: { body: json(SignInBody) },
      responses: { 200: sessionAnswer, ...errorResponses(400, 401, 403, 429) },
    }),
    async (c) => {
      const { email, password } = c.req.valid("json");
      await assertNotLocked(c, email);
      const found = await usersTable.findUserByEmail(c.var.db, email);
      // An unknown email costs the same hashing as a wrong password, so timing does not tell which emails exist.
      const matches = await verifyPassword(password, found?.user.passwordHash ?? (await dummyHash()));
      if (!found?.user.passwordHash || !matches) {
        await recordFailure(c, email);
        throw WRONG();
      }
      if (found.tenant.status !== "active") throw ApiError.forbidden("tenant_suspended", "This tenant is suspended.");
      await sessionsTable.clearFailures(c.var.db, email);
      const session = await startSession(c, found.user);
      await audit(c, { tenantId: found.tenant.id, actor: found.user.id, action: "user.signin", target: session.id });
      return c.json(sessionBody(found.user, found.tenant, session.csrfToken), 200);
    },
  )
  .openapi(
    createRoute({
      method: "post",
      path: "/auth/signup",
      operationId: "signUp",
      tags: ["auth"],
      summary: "Create an account from an invite; sets the session cookie",
      security: [],
      request: { body: json(SignUpBody) },
      responses: { 200: sessionAnswer, ...errorResponses(400, 403, 409, 429) },
    }),
    async (c) => {
      const body = c.req.valid("json");
      await assertNotLocked(c, undefined);
      assertStrong(body.password, "password");
      const now = Date.now();
      const found = await invitesTable.findInviteByHash(c.var.db, await sha256Hex(body.invite_token));
      const invalid = () =>
        ApiError.invalid(
          "invalid_invite",
          "This invite is unknown, used or expired; ask for a new one.",
          "invite_token",
        );
      if (!found || found.invite.usedAt !== null || found.invite.expiresAt <= now) {
        await recordFailure(c, undefined, now);
        throw invalid();
      }
      const { invite, tenant } = found;
      if (tenant.status !== "active") throw ApiError.forbidden("tenant_suspended", "This tenant is suspended.");
      if (await usersTable.emailTaken(c.var.db, invite.email)) {
        throw ApiError.conflict("email_taken", `'${invite.email}' already has an account; sign in instead.`);
      }
      const user = await usersTable.createUserFromInvite(
        c.var.db,
        {
          id: newId("usr", now),
          tenantId: tenant.id,
          email: invite.email,
          name: body.name,
          role: invite.role,
          passwordHash: await hashPassword(body.password),
          createdAt: now,
        },
        invite.id,
        now,
      );
      if (!user) throw invalid(); // spent by a concurrent sign-up
      const session = await startSession(c, user, now);
      await audit(c, {
        tenantId: tenant.id,
        actor: user.id,
        action: "user.signup",
        target: user.id,
        details: { invite: invite.id },
      });
      return c.json(sessionBody(user, tenant, session.csrfToken), 200);
    },
  )
  .openapi(
    createRoute({
      method: "get",
      path: "/auth/session",
      operationId: "getSession",
      tags: ["auth"],
      summary: "Who is calling: the signed-in user and the CSRF token, or the API key",
      responses: {
        200: { description: "The caller", content: { "application/json": { schema: Session } } },
        ...errorResponses(401, 403, 429),
      },
    }),
    async (c) => {
      const { user, session, key, tenant } = c.var.auth;
      if (user && session) return c.json(sessionBody(user, tenant, session.csrfToken), 200);
      return c.json(
        {
          user: null,
          tenant: { id: tenant.id, name: tenant.name },
          csrf_token: null,
          key: { id: key!.id, name: key!.name, scopes: key!.scopes },
        },
        200,
      );
    },
  )
  .openapi(
    createRoute({
      method: "post",
      path: "/auth/signout",
      operationId: "signOut",
      tags: ["auth"],
      summary: "Sign out this session; clears the cookie",
      responses: { 204: { description: "Signed out" }, ...errorResponses(401, 403, 429) },
    }),
    async (c) => {
      const { user, session } = requireSession(c);
      await sessionsTable.deleteSession(c.var.db, session.id);
      await audit(c, { tenantId: user.tenantId, actor: user.id, action: "user.signout", target: session.id });
      clearSessionCookie(c);
      return c.body(null, 204);
    },
  )
  .openapi(
    createRoute({
      method: "post",
      path: "/auth/signout-all",
      operationId: "signOutEverywhere",
      tags: ["auth"],
      summary: "Sign out every session of this user; clears the cookie",
      responses: { 204: { description: "Signed out everywhere" }, ...errorResponses(401, 403, 429) },
    }),
    async (c) => {
      const { user } = requireSession(c);
      const ended = await sessionsTable.deleteUserSessions(c.var.db, user.id);
      await audit(c, {
        tenantId: user.tenantId,
        actor: user.id,
        action: "user.signout_all",
        details: { sessions: ended },
      });
      clearSessionCookie(c);
      return c.body(null, 204);
    },
  )
  .openapi(
    createRoute({
      method: "post",
      path: "/auth/password",
      operationId: "changePassword",
      tags: ["auth"],
      summary: "Change the signed-in user's password; signs out their other sessions",
      request: { body: json(ChangePasswordBody) },
      responses: { 204: { description: "Changed" }, ...errorResponses(400, 401, 403, 429) },
    }),
    async (c) => {
      const { user, session } = requireSession(c);
      const { current_password, new_password } = c.req.valid("json");
      // Guessing the current password from a stolen session is slowed like signing in.
      await assertNotLocked(c, user.email);
      if (!user.passwordHash || !(await verifyPassword(current_password, user.passwordHash))) {
        await recordFailure(c, user.email);
        throw ApiError.invalid("wrong_password", "The current password is wrong.", "current_password");
      }
      assertStrong(new_password, "new_password");
      await usersTable.setPasswordHash(c.var.db, user.id, await hashPassword(new_password));
      const ended = await sessionsTable.deleteUserSessions(c.var.db, user.id, session.id);
      await audit(c, {
        tenantId: user.tenantId,
        actor: user.id,
        action: "user.password_change",
        details: { sessions_ended: ended },
      });
      return c.body(null, 204);
    },
  );
