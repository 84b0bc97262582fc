import { createRoute, z } from "@hono/zod-openapi";
import { webhooksTable } from "@imagegen/db";
import {
  CreateWebhookEndpointBody,
  errorResponses,
  IdParam,
  iso,
  ListWebhookDeliveriesQuery,
  RotateWebhookSecretBody,
  UpdateWebhookEndpointBody,
  WEBHOOK_SIGNATURE_SCHEME,
  WebhookDelivery,
  WebhookEndpoint,
  WebhookEndpointWithSecret,
  WebhookSecret,
} from "@imagegen/contracts";
import { requireScope } from "../auth/middleware.ts";
import { requireRole } from "../users/roles.ts";
import type { Context } from "hono";
import { router, type AppEnv } from "../context.ts";
import { ApiError } from "../errors.ts";
import { audit } from "../audit/log.ts";
import { attemptDelivery } from "../webhooks/deliver.ts";
import { scheduleDelivery } from "../webhooks/deliverer.ts";
import { createEndpoint, presentDelivery, presentEndpoint, updateEndpoint } from "../webhooks/endpoints.ts";
import { describeRing, endpointRing, rotateEndpointSecret, rotateTenantSecret, tenantRing } from "../webhooks/keys.ts";
import type { SecretRing } from "../webhooks/secrets.ts";

const ok = <T extends z.ZodType>(schema: T, description: string) => ({
  description,
  content: { "application/json": { schema } },
});
const json = <T extends z.ZodType>(schema: T) => ({
  body: { content: { "application/json": { schema } }, required: true },
});
const EndpointId = IdParam("webhook endpoint id", "whe_01hzy3k8m2q9w7e4r5t6y7u8i9");
const List = <T extends z.ZodType>(item: T) => z.object({ object: z.literal("list"), data: z.array(item) });

const presentSecret = (ring: SecretRing): WebhookSecret => {
  const { secret, previousExpiresAt } = describeRing(ring);
  return { secret, scheme: WEBHOOK_SIGNATURE_SCHEME, previous_secret_expires_at: iso(previousExpiresAt) };
};

async function ownEndpoint(c: Context<AppEnv>, id: string) {
  const endpoint = await webhooksTable.getEndpoint(c.var.db, c.var.auth.tenant.id, id);
  if (!endpoint) throw ApiError.notFound("webhook endpoint", id, "id");
  return endpoint;
}

export const webhooks = router()
  .openapi(
    createRoute({
      method: "get",
      path: "/webhooks/endpoints",
      operationId: "listWebhookEndpoints",
      tags: ["webhooks"],
      summary: "List webhook endpoints",
      responses: { 200: ok(List(WebhookEndpoint), "Endpoints"), ...errorResponses(401, 403, 429) },
    }),
    async (c) => {
      requireScope(c, "keys:write");
      return c.json(
        {
          object: "list" as const,
          data: (await webhooksTable.listEndpoints(c.var.db, c.var.auth.tenant.id)).map(presentEndpoint),
        },
        200,
      );
    },
  )
  .openapi(
    createRoute({
      method: "post",
      path: "/webhooks/endpoints",
      operationId: "createWebhookEndpoint",
      tags: ["webhooks"],
      summary: "Register a webhook endpoint (its secret is in the answer)",
      request: json(CreateWebhookEndpointBody),
      responses: { 201: ok(WebhookEndpointWithSecret, "Created"), ...errorResponses(400, 401, 403, 429) },
    }),
    async (c) => {
      requireScope(c, "keys:write");
      const created = await createEndpoint(c.env, c.var.db, c.var.auth.tenant.id, c.req.valid("json"));
      await audit(c, {
        tenantId: c.var.auth.tenant.id,
        actor: c.var.auth.actor,
        action: "webhook_endpoint.create",
        target: created.id,
      });
      return c.json(created, 201);
    },
  )
  .openapi(
    createRoute({
      method: "get",
      path: "/webhooks/endpoints/{id}",
      operationId: "getWebhookEndpoint",
      tags: ["webhooks"],
      summary: "A webhook endpoint",
      request: { params: EndpointId },
      responses: { 200: ok(WebhookEndpoint, "The endpoint"), ...errorResponses(401, 403, 404, 429) },
    }),
    async (c) => {
      requireScope(c, "keys:write");
      return c.json(presentEndpoint(await ownEndpoint(c, c.req.valid("param").id)), 200);
    },
  )
  .openapi(
    createRoute({
      method: "patch",
      path: "/webhooks/endpoints/{id}",
      operationId: "updateWebhookEndpoint",
      tags: ["webhooks"],
      summary: "Change an endpoint's URL or event types, or disable it",
      request: { params: EndpointId, ...json(UpdateWebhookEndpointBody) },
      responses: { 200: ok(WebhookEndpoint, "Updated"), ...errorResponses(400, 401, 403, 404, 429) },
    }),
    async (c) => {
      requireScope(c, "keys:write");
      const { id } = c.req.valid("param");
      const updated = await updateEndpoint(c.env, c.var.db, c.var.auth.tenant.id, id, c.req.valid("json"));
      await audit(c, {
        tenantId: c.var.auth.tenant.id,
        actor: c.var.auth.actor,
        action: "webhook_endpoint.update",
        target: id,
      });
      return c.json(updated, 200);
    },
  )
  .openapi(
    createRoute({
      method: "delete",
      path: "/webhooks/endpoints/{id}",
      operationId: "deleteWebhookEndpoint",
      tags: ["webhooks"],
      summary: "Delete an endpoint (its pending deliveries fail)",
      request: { params: EndpointId },
      responses: { 204: { description: "Deleted" }, ...errorResponses(401, 403, 404, 429) },
    }),
    async (c) => {
      requireScope(c, "keys:write");
      const { id } = c.req.valid("param");
      if (!(await webhooksTable.deleteEndpoint(c.var.db, c.var.auth.tenant.id, id)))
        throw ApiError.notFound("webhook endpoint", id, "id");
      await audit(c, {
        tenantId: c.var.auth.tenant.id,
        actor: c.var.auth.actor,
        action: "webhook_endpoint.delete",
        target: id,
      });
      return c.body(null, 204);
    },
  )
  .openapi(
    createRoute({
      method: "get",
      path: "/webhooks/endpoints/{id}/secret",
      operationId: "getWebhookEndpointSecret",
      tags: ["webhooks"],
      summary: "The secret that signs this endpoint's deliveries",
      request: { params: EndpointId },
      responses: { 200: ok(WebhookSecret, "The secret"), ...errorResponses(401, 403, 404, 429) },
    }),
    async (c) => {
      requireScope(c, "keys:write");
      return c.json(
        presentSecret(await endpointRing(c.env, c.var.db, await ownEndpoint(c, c.req.valid("param").id))),
        200,
      );
    },
  )
  .openapi(
    createRoute({
      method: "post",
      path: "/webhooks/endpoints/{id}/secret/rotate",
      operationId: "rotateWebhookEndpointSecret",
      tags: ["webhooks"],
      summary: "Replace an endpoint's secret; the old one keeps signing for a while",
      request: {
        params: EndpointId,
        body: { content: { "application/json": { schema: RotateWebhookSecretBody } }, required: false },
      },
      responses: { 200: ok(WebhookSecret, "The new secret"), ...errorResponses(400, 401, 403, 404, 429) },
    }),
    async (c) => {
      requireScope(c, "keys:write");
      const { id } = c.req.valid("param");
      const { previous_secret_expires_in } = RotateWebhookSecretBody.parse(c.req.valid("json")); // an absent body skips validation
      const ring = await rotateEndpointSecret(
        c.env,
        c.var.db,
        await ownEndpoint(c, id),
        previous_secret_expires_in * 1000,
      );
      await audit(c, {
        tenantId: c.var.auth.tenant.id,
        actor: c.var.auth.actor,
        action: "webhook_endpoint.rotate_secret",
        target: id,
      });
      return c.json(presentSecret(ring), 200);
    },
  )
  .openapi(
    createRoute({
      method: "get",
      path: "/webhooks/secret",
      operationId: "getWebhookSecret",
      tags: ["webhooks"],
      summary: "The secret that signs deliveries to a request's own webhook_url",
      responses: { 200: ok(WebhookSecret, "The secret"), ...errorResponses(401, 403, 429) },
    }),
    async (c) => {
      requireScope(c, "keys:write");
      return c.json(presentSecret(await tenantRing(c.env, c.var.db, c.var.auth.tenant.id)), 200);
    },
  )
  .openapi(
    createRoute({
      method: "post",
      path: "/webhooks/secret/rotate",
      operationId: "rotateWebhookSecret",
      tags: ["webhooks"],
      summary: "Replace the secret for a request's own webhook_url; the old one keeps signing for a while",
      request: { body: { content: { "application/json": { schema: RotateWebhookSecretBody } }, required: false } },
      responses: { 200: ok(WebhookSecret, "The new secret"), ...errorResponses(400, 401, 403, 429) },
    }),
    async (c) => {
      requireScope(c, "keys:write");
      const { previous_secret_expires_in } = RotateWebhookSecretBody.parse(c.req.valid("json")); // an absent body skips validation
      const ring = await rotateTenantSecret(c.env, c.var.db, c.var.auth.tenant.id, previous_secret_expires_in * 1000);
      await audit(c, { tenantId: c.var.auth.tenant.id, actor: c.var.auth.actor, action: "webhook_secret.rotate" });
      return c.json(presentSecret(ring), 200);
    },
  )
  .openapi(
    createRoute({
      method: "get",
      path: "/webhooks/deliveries",
      operationId: "listWebhookDeliveries",
      tags: ["webhooks"],
      summary: "Recent webhook deliveries",
      request: { query: ListWebhookDeliveriesQuery },
      responses: { 200: ok(List(WebhookDelivery), "Deliveries"), ...errorResponses(400, 401, 403, 429) },
    }),
    async (c) => {
      requireScope(c, "generations:read");
      requireRole(c, "admin"); // webhooks are managed by admins; members only use the API
      const { endpoint_id } = c.req.valid("query");
      return c.json(
        {
          object: "list" as const,
          data: (await webhooksTable.listDeliveries(c.var.db, c.var.auth.tenant.id, { endpointId: endpoint_id })).map(
            presentDelivery,
          ),
        },
        200,
      );
    },
  )
  .openapi(
    createRoute({
      method: "post",
      path: "/webhooks/deliveries/{id}/redeliver",
      operationId: "redeliverWebhook",
      tags: ["webhooks"],
      summary: "Send a delivery again, now",
      request: { params: IdParam("delivery id", "whd_01hzy3k8m2q9w7e4r5t6y7u8i9") },
      responses: { 200: ok(WebhookDelivery, "After the attempt"), ...errorResponses(401, 403, 404, 429) },
    }),
    async (c) => {
      requireScope(c, "generations:write");
      requireRole(c, "admin");
      const { id } = c.req.valid("param");
      const d = await webhooksTable.redeliver(c.var.db, c.var.auth.tenant.id, id, Date.now());
      if (!d) throw ApiError.notFound("webhook delivery", id, "id");
      const after = (await attemptDelivery(c.env, c.var.db, d)) ?? d;
      // A failed attempt is retried on the usual schedule.
      c.executionCtx.waitUntil(scheduleDelivery(c.env, after));
      return c.json(presentDelivery(after), 200);
    },
  );
