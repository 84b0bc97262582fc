import { createRoute, z } from "@hono/zod-openapi";
import { webhooksTable } from "@imagegen/db";
import { requireScope } from "../auth/middleware.ts";
import { router } from "../context.ts";
import { ApiError } from "../errors.ts";
import { newSecret } from "../lib/crypto.ts";
import { errorResponses, IdParam, iso, WEBHOOK_SIGNATURE_SCHEME, WebhookDelivery, WebhookSecret } from "@imagegen/contracts";
import { deliver, tenantWebhookSecret } from "../webhooks/index.ts";
import { audit } from "../audit/log.ts";

const present = (d: webhooksTable.Delivery): WebhookDelivery => ({
  id: d.id,
  object: "webhook_delivery",
  event: d.event,
  url: d.url,
  generation_id: d.jobId,
  status: d.status,
  attempts: d.attempts,
  next_attempt_at: iso(d.nextAttemptAt),
  last_response_status: d.lastResponseStatus,
  last_error: d.lastError,
  created_at: iso(d.createdAt)!,
});
const ok = <T extends z.ZodType>(schema: T, description: string) => ({ description, content: { "application/json": { schema } } });

export const webhooks = router()
  .openapi(
    createRoute({ method: "get", path: "/webhooks/secret", tags: ["webhooks"], summary: "The secret that signs this tenant's webhook deliveries (Imagegen-Signature)", responses: { 200: ok(WebhookSecret, "The secret"), ...errorResponses(401, 403, 429) } }),
    async (c) => {
      requireScope(c, "keys:write");
      return c.json({ secret: await tenantWebhookSecret(c.var.db, c.var.auth.tenant.id), scheme: WEBHOOK_SIGNATURE_SCHEME }, 200);
    },
  )
  .openapi(
    createRoute({ method: "post", path: "/webhooks/secret/rotate", tags: ["webhooks"], summary: "Replace the webhook signing secret", responses: { 200: ok(WebhookSecret, "The new secret"), ...errorResponses(401, 403, 429) } }),
    async (c) => {
      requireScope(c, "keys:write");
      const secret = newSecret("whsec");
      await webhooksTable.rotateWebhookSecret(c.var.db, c.var.auth.tenant.id, secret);
      await audit(c, { tenantId: c.var.auth.tenant.id, actor: c.var.auth.key.id, action: "webhook_secret.rotate" });
      return c.json({ secret, scheme: WEBHOOK_SIGNATURE_SCHEME }, 200);
    },
  )
  .openapi(
    createRoute({ method: "get", path: "/webhooks/deliveries", tags: ["webhooks"], summary: "Recent webhook deliveries", responses: { 200: ok(z.object({ object: z.literal("list"), data: z.array(WebhookDelivery) }), "Deliveries"), ...errorResponses(401, 429) } }),
    async (c) => {
      requireScope(c, "generations:read");
      return c.json({ object: "list" as const, data: (await webhooksTable.listDeliveries(c.var.db, c.var.auth.tenant.id)).map(present) }, 200);
    },
  )
  .openapi(
    createRoute({ method: "post", path: "/webhooks/deliveries/{id}/redeliver", tags: ["webhooks"], summary: "Send a delivery again, now", request: { params: IdParam("delivery id", "whd_01hzy3k8m2q9w7e4r5t6y7u8i9") }, responses: { 200: ok(WebhookDelivery, "After the attempt"), ...errorResponses(401, 404, 429) } }),
    async (c) => {
      requireScope(c, "generations:write");
      const { id } = c.req.valid("param");
      const d = await webhooksTable.redeliver(c.var.db, c.var.auth.tenant.id, id, Date.now());
      if (!d) throw ApiError.notFound("webhook delivery", id, "id");
      return c.json(present((await deliver(c.var.db, d)) ?? d), 200);
    },
  );
