import { createRoute, z } from "@hono/zod-openapi";
import { addonsTable } from "@imagegen/db";
import { requireScope } from "../auth/middleware.ts";
import { router } from "../context.ts";
import { ApiError } from "../errors.ts";
import { Addon } from "../schemas/admin.ts";
import { errorResponses, IdParam, iso } from "../schemas/common.ts";

export function presentAddon(a: addonsTable.Addon, tenantId: string): z.infer<typeof Addon> {
  return {
    id: a.id,
    object: "addon",
    kind: a.kind,
    name: a.name,
    family: a.family,
    visibility: a.visibility,
    latest_version: a.latestVersion,
    owned: a.tenantId === tenantId,
    created_at: iso(a.createdAt)!,
  };
}

export const addons = router()
  .openapi(
    createRoute({ method: "get", path: "/addons", tags: ["addons"], summary: "List the add-ons this tenant can use (its own and public ones)", responses: { 200: { description: "Add-ons", content: { "application/json": { schema: z.object({ object: z.literal("list"), data: z.array(Addon) }) } } }, ...errorResponses(401, 429) } }),
    async (c) => {
      requireScope(c, "addons:read");
      const tenantId = c.var.auth.tenant.id;
      return c.json({ object: "list" as const, data: (await addonsTable.listVisibleAddons(c.var.db, tenantId)).map((a) => presentAddon(a, tenantId)) }, 200);
    },
  )
  .openapi(
    createRoute({ method: "get", path: "/addons/{id}", tags: ["addons"], summary: "Get an add-on", request: { params: IdParam("add-on id", "addon_01hzy3k8m2q9w7e4r5t6y7u8i9") }, responses: { 200: { description: "The add-on", content: { "application/json": { schema: Addon } } }, ...errorResponses(401, 404, 429) } }),
    async (c) => {
      requireScope(c, "addons:read");
      const { id } = c.req.valid("param");
      const a = await addonsTable.getVisibleAddon(c.var.db, c.var.auth.tenant.id, id);
      if (!a) throw ApiError.notFound("add-on", id, "id");
      return c.json(presentAddon(a, c.var.auth.tenant.id), 200);
    },
  )
  .openapi(
    createRoute({ method: "delete", path: "/addons/{id}", tags: ["addons"], summary: "Delete an add-on this tenant owns", request: { params: IdParam("add-on id", "addon_01hzy3k8m2q9w7e4r5t6y7u8i9") }, responses: { 200: { description: "Deleted", content: { "application/json": { schema: Addon } } }, ...errorResponses(401, 403, 404, 429) } }),
    async (c) => {
      requireScope(c, "addons:write");
      const { id } = c.req.valid("param");
      const tenantId = c.var.auth.tenant.id;
      const deleted = await addonsTable.deleteOwnedAddon(c.var.db, tenantId, id, Date.now());
      // Someone else's add-on, public or not, is not this tenant's to delete: the same 404 as a missing one.
      if (!deleted) throw ApiError.notFound("add-on", id, "id");
      return c.json(presentAddon(deleted, tenantId), 200);
    },
  );
