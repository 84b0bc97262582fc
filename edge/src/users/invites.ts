/** Invites: a link with a random token (stored hashed, shown once) that lets one person sign up into a tenant. */
import type { z } from "@hono/zod-openapi";
import type { CreateInviteBody, CreatedInvite } from "@imagegen/contracts";
import { invitesTable, type tenantsTable, usersTable } from "@imagegen/db";
import type { Context } from "hono";
import { audit } from "../audit/log.ts";
import type { AppEnv } from "../context.ts";
import { ApiError } from "../errors.ts";
import { newSecret, sha256Hex } from "../lib/crypto.ts";
import { newId } from "../lib/ids.ts";
import { presentInvite } from "./present.ts";
import { ownOrigin } from "./sessions.ts";

export const INVITE_TOKEN_PREFIX = "igi";
export const INVITE_TTL_MS = 7 * 86_400_000;

/** The dashboard page that takes an invite: the link in every invite. */
export const signupUrl = (origin: string, token: string) =>
  `${origin}/dashboard/signup?invite=${encodeURIComponent(token)}`;

/** Used by owners (`POST /v1/invites`) and the operator (`POST /admin/v1/tenants/{id}/invites`, the first owner). */
export async function createInvite(
  c: Context<AppEnv>,
  tenant: tenantsTable.Tenant,
  body: z.infer<typeof CreateInviteBody>,
  actor: string,
): Promise<z.infer<typeof CreatedInvite>> {
  // Sign-in names only the email, so one email is one account in one tenant.
  if (await usersTable.emailTaken(c.var.db, body.email)) {
    throw ApiError.conflict("email_taken", `'${body.email}' already has an account.`);
  }
  const now = Date.now();
  const token = newSecret(INVITE_TOKEN_PREFIX);
  const invite = await invitesTable.insertInvite(c.var.db, {
    id: newId("inv", now),
    tenantId: tenant.id,
    email: body.email,
    role: body.role,
    tokenHash: await sha256Hex(token),
    createdBy: actor,
    createdAt: now,
    expiresAt: now + INVITE_TTL_MS,
  });
  await audit(c, {
    tenantId: tenant.id,
    actor,
    action: "invite.create",
    target: invite.id,
    details: { email: invite.email, role: invite.role },
  });
  return { ...presentInvite(invite), token, url: signupUrl(ownOrigin(c), token) };
}
