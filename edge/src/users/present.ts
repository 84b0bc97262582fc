import { iso, type Invite, type User } from "@imagegen/contracts";
import type { invitesTable, usersTable } from "@imagegen/db";
import type { z } from "@hono/zod-openapi";

export function presentUser(u: usersTable.User): z.infer<typeof User> {
  return { id: u.id, email: u.email, name: u.name, role: u.role, tenant_id: u.tenantId, created_at: iso(u.createdAt)! };
}

export function presentInvite(i: invitesTable.Invite): z.infer<typeof Invite> {
  return {
    id: i.id,
    email: i.email,
    role: i.role,
    created_by: i.createdBy,
    expires_at: iso(i.expiresAt)!,
    used_at: iso(i.usedAt),
    created_at: iso(i.createdAt)!,
  };
}
