/**
 * Roles map onto the API keys' scopes, so every route checks one thing (`requireScope`) whoever calls it:
 * member → use (generations, reading add-ons); admin and owner → every scope. Managing users and invites is the
 * owner's alone, and only from a session: an API key, however scoped, never manages people.
 */
import { SCOPES, type Scope, type UserRole } from "@imagegen/contracts";
import type { AppEnv } from "../context.ts";
import { ApiError } from "../errors.ts";

const MEMBER_SCOPES: readonly Scope[] = ["generations:read", "generations:write", "addons:read"];

export function scopesForRole(role: UserRole): readonly Scope[] {
  return role === "member" ? MEMBER_SCOPES : SCOPES;
}

const RANK: Record<UserRole, number> = { member: 0, admin: 1, owner: 2 };

export const insufficientRole = (needed: UserRole) =>
  ApiError.forbidden("insufficient_role", `This needs the ${needed} role${needed === "owner" ? "" : " or higher"}.`);

/** A signed-in user of at least `role`; API keys pass (their scopes decide), except for `owner`, which needs a person. */
export function requireRole(c: { var: Pick<AppEnv["Variables"], "auth"> }, role: UserRole): void {
  const { user } = c.var.auth;
  if (!user) {
    if (role === "owner") throw insufficientRole("owner");
    return;
  }
  if (RANK[user.role] < RANK[role]) throw insufficientRole(role);
}
