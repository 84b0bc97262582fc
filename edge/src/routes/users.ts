/** A tenant's people and invites: admins read, owners manage (see edge/src/users/README.md). */
import { createRoute, type z } from "@hono/zod-openapi";
import {
  CreatedInvite,
  CreateInviteBody,
  errorResponses,
  IdParam,
  InviteList,
  UpdateUserBody,
  User,
  UserList,
} from "@imagegen/contracts";
import { invitesTable, usersTable } from "@imagegen/db";
import { audit } from "../audit/log.ts";
import { requireScope } from "../auth/middleware.ts";
import { router } from "../context.ts";
import { ApiError } from "../errors.ts";
import { createInvite } from "../users/invites.ts";
import { presentInvite, presentUser } from "../users/present.ts";
import { requireRole } from "../users/roles.ts";

const json = <T extends z.ZodType>(schema: T) => ({ content: { "application/json": { schema } }, required: true });
const ok = <T extends z.ZodType>(schema: T, description: string) => ({
  description,
  content: { "application/json": { schema } },
});
const UserId = IdParam("user id", "usr_01hzy3k8m2q9w7e4r5t6y7u8i9");
const InviteId = IdParam("invite id", "inv_01hzy3k8m2q9w7e4r5t6y7u8i9");

const lastOwner = () =>
  ApiError.conflict("last_owner", "A tenant keeps at least one owner: make someone else owner first.");

export const users = router()
  .openapi(
    createRoute({
      method: "get",
      path: "/users",
      operationId: "listUsers",
      tags: ["users"],
      summary: "List this tenant's users (admins and owners; API keys with `keys:write`)",
      responses: { 200: ok(UserList, "Users"), ...errorResponses(401, 403, 429) },
    }),
    async (c) => {
      requireScope(c, "keys:write");
      return c.json({ data: (await usersTable.listUsers(c.var.db, c.var.auth.tenant.id)).map(presentUser) }, 200);
    },
  )
  .openapi(
    createRoute({
      method: "patch",
      path: "/users/{id}",
      operationId: "updateUser",
      tags: ["users"],
      summary: "Change a user's role (owners only)",
      request: { params: UserId, body: json(UpdateUserBody) },
      responses: { 200: ok(User, "Updated"), ...errorResponses(400, 401, 403, 404, 409, 429) },
    }),
    async (c) => {
      requireRole(c, "owner");
      const { id } = c.req.valid("param");
      const { role } = c.req.valid("json");
      const tenantId = c.var.auth.tenant.id;
      const outcome = await usersTable.setRole(c.var.db, tenantId, id, role);
      if (!outcome.ok) throw outcome.reason === "last_owner" ? lastOwner() : ApiError.notFound("user", id, "id");
      await audit(c, { tenantId, actor: c.var.auth.actor, action: "user.role", target: id, details: { role } });
      return c.json(presentUser(outcome.user), 200);
    },
  )
  .openapi(
    createRoute({
      method: "delete",
      path: "/users/{id}",
      operationId: "deleteUser",
      tags: ["users"],
      summary: "Remove a user and end their sessions (owners only)",
      request: { params: UserId },
      responses: { 204: { description: "Deleted" }, ...errorResponses(401, 403, 404, 409, 429) },
    }),
    async (c) => {
      requireRole(c, "owner");
      const { id } = c.req.valid("param");
      const tenantId = c.var.auth.tenant.id;
      const outcome = await usersTable.deleteUser(c.var.db, tenantId, id);
      if (!outcome.ok) throw outcome.reason === "last_owner" ? lastOwner() : ApiError.notFound("user", id, "id");
      await audit(c, {
        tenantId,
        actor: c.var.auth.actor,
        action: "user.delete",
        target: id,
        details: { email: outcome.user.email },
      });
      return c.body(null, 204);
    },
  )
  .openapi(
    createRoute({
      method: "post",
      path: "/invites",
      operationId: "createInvite",
      tags: ["users"],
      summary: "Invite someone by link (owners only; the token and link are shown once)",
      request: { body: json(CreateInviteBody) },
      responses: { 201: ok(CreatedInvite, "Created"), ...errorResponses(400, 401, 403, 409, 429) },
    }),
    async (c) => {
      requireRole(c, "owner");
      return c.json(await createInvite(c, c.var.auth.tenant, c.req.valid("json"), c.var.auth.actor), 201);
    },
  )
  .openapi(
    createRoute({
      method: "get",
      path: "/invites",
      operationId: "listInvites",
      tags: ["users"],
      summary: "List this tenant's invites (admins and owners; API keys with `keys:write`)",
      responses: { 200: ok(InviteList, "Invites"), ...errorResponses(401, 403, 429) },
    }),
    async (c) => {
      requireScope(c, "keys:write");
      return c.json({ data: (await invitesTable.listInvites(c.var.db, c.var.auth.tenant.id)).map(presentInvite) }, 200);
    },
  )
  .openapi(
    createRoute({
      method: "delete",
      path: "/invites/{id}",
      operationId: "deleteInvite",
      tags: ["users"],
      summary: "Withdraw an invite (owners only)",
      request: { params: InviteId },
      responses: { 204: { description: "Deleted" }, ...errorResponses(401, 403, 404, 429) },
    }),
    async (c) => {
      requireRole(c, "owner");
      const { id } = c.req.valid("param");
      const tenantId = c.var.auth.tenant.id;
      if (!(await invitesTable.deleteInvite(c.var.db, tenantId, id))) throw ApiError.notFound("invite", id, "id");
      await audit(c, { tenantId, actor: c.var.auth.actor, action: "invite.delete", target: id });
      return c.body(null, 204);
    },
  );
