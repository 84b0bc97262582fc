import { createRoute } from "@hono/zod-openapi";
import { apiKeysTable } from "@imagegen/db";
import { requireScope } from "../auth/middleware.ts";
import { router } from "../context.ts";
import { ApiError } from "../errors.ts";
import { ApiKey, ApiKeyList, CreatedApiKey, CreateKeyBody, errorResponses, IdParam } from "@imagegen/contracts";
import { audit } from "../audit/log.ts";
import { createKey, presentKey } from "../auth/keys.ts";

const KeyId = IdParam("API key id", "key_01hzy3k8m2q9w7e4r5t6y7u8i9");

export const keys = router()
  .openapi(
    createRoute({
      method: "get",
      path: "/keys",
      operationId: "listKeys",
      tags: ["keys"],
      summary: "List this tenant's API keys (needs `keys:write`)",
      responses: {
        200: { description: "Keys", content: { "application/json": { schema: ApiKeyList } } },
        ...errorResponses(401, 403, 429),
      },
    }),
    async (c) => {
      // The list names every key and its scopes: that is managing keys, which only `keys:write` may.
      requireScope(c, "keys:write");
      return c.json(
        {
          object: "list" as const,
          data: (await apiKeysTable.listKeys(c.var.db, c.var.auth.tenant.id)).map(presentKey),
        },
        200,
      );
    },
  )
  .openapi(
    createRoute({
      method: "post",
      path: "/keys",
      operationId: "createKey",
      tags: ["keys"],
      summary: "Create an API key (the secret is shown once)",
      request: { body: { content: { "application/json": { schema: CreateKeyBody } }, required: true } },
      responses: {
        201: { description: "Created", content: { "application/json": { schema: CreatedApiKey } } },
        ...errorResponses(400, 401, 403, 429),
      },
    }),
    async (c) => {
      requireScope(c, "keys:write");
      const { tenant, scopes, actor, user } = c.var.auth;
      const body = c.req.valid("json");
      // A key cannot mint a key with more power than its own (nor a user more than their role gives).
      const excess = body.scopes.filter((s) => !scopes.includes(s));
      if (excess.length)
        throw ApiError.forbidden("missing_scope", `This API key cannot grant scopes it lacks: ${excess.join(", ")}.`);
      return c.json(await createKey(c, tenant, body, actor, user?.id), 201);
    },
  )
  .openapi(
    createRoute({
      method: "delete",
      path: "/keys/{id}",
      operationId: "revokeKey",
      tags: ["keys"],
      summary: "Revoke an API key",
      request: { params: KeyId },
      responses: {
        200: { description: "Revoked", content: { "application/json": { schema: ApiKey } } },
        ...errorResponses(401, 403, 404, 429),
      },
    }),
    async (c) => {
      requireScope(c, "keys:write");
      const { id } = c.req.valid("param");
      const tenantId = c.var.auth.tenant.id;
      const revoked = await apiKeysTable.revokeKey(c.var.db, tenantId, id, Date.now());
      if (!revoked) throw ApiError.notFound("API key", id, "id");
      await audit(c, { tenantId, actor: c.var.auth.actor, action: "api_key.revoke", target: id });
      return c.json(presentKey(revoked), 200);
    },
  );
