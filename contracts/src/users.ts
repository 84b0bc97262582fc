/** People of a tenant (the dashboard's accounts) and the invites that bring them in. API keys stay for programs. */
import { z } from "@hono/zod-openapi";
import { Timestamp } from "./common.ts";
import { USER_ROLES } from "./enums.ts";

export const UserRole = z.enum(USER_ROLES);
export type UserRole = z.infer<typeof UserRole>;

export const Email = z
  .string()
  .trim()
  .toLowerCase()
  .min(3)
  .max(254)
  .regex(/^[^\s@]+@[^\s@]+$/, "Not an email address.")
  .openapi({ example: "ada@example.com" });

export const User = z
  .object({
    id: z.string(),
    email: z.string(),
    name: z.string(),
    role: UserRole,
    tenant_id: z.string(),
    created_at: Timestamp,
  })
  .openapi("User");
export type User = z.infer<typeof User>;

export const UserList = z.object({ data: z.array(User) }).openapi("UserList");

export const UpdateUserBody = z.object({ role: UserRole }).strict().openapi("UpdateUser");

export const CreateInviteBody = z
  .object({ email: Email, role: UserRole.default("member") })
  .strict()
  .openapi("CreateInvite");

export const Invite = z
  .object({
    id: z.string(),
    email: z.string(),
    role: UserRole,
    created_by: z.string(),
    expires_at: Timestamp,
    used_at: Timestamp.nullable(),
    created_at: Timestamp,
  })
  .openapi("Invite");

/** Only the answer to a create carries the token (and the sign-up link made of it): it is stored hashed. */
export const CreatedInvite = Invite.extend({
  token: z.string(),
  url: z.string().openapi({ example: "https://edge.example.com/dashboard/signup?invite=igi_…" }),
}).openapi("CreatedInvite");

export const InviteList = z.object({ data: z.array(Invite) }).openapi("InviteList");

/** The operator's invite (`/admin/v1/tenants/{id}/invites`): how a tenant's first owner gets in; owner by default. */
export const AdminCreateInviteBody = CreateInviteBody.extend({ role: UserRole.default("owner") }).openapi(
  "AdminCreateInvite",
);
