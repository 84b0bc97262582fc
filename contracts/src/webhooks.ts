/** Webhooks: the tenant's signing secret and the record of each delivery. */
import { z } from "@hono/zod-openapi";
import { WEBHOOK_DELIVERY_STATUSES } from "./enums.ts";

/** How a delivery is signed, in the `Imagegen-Signature` header. */
export const WEBHOOK_SIGNATURE_SCHEME = 't=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">' as const;

export const WebhookSecret = z.object({ secret: z.string(), scheme: z.literal(WEBHOOK_SIGNATURE_SCHEME) }).openapi("WebhookSecret");

export const WebhookDeliveryStatus = z.enum(WEBHOOK_DELIVERY_STATUSES);

export const WebhookDelivery = z
  .object({
    id: z.string(),
    object: z.literal("webhook_delivery"),
    event: z.string(),
    url: z.string(),
    generation_id: z.string().nullable(),
    status: WebhookDeliveryStatus,
    attempts: z.number().int(),
    next_attempt_at: z.string().nullable(),
    last_response_status: z.number().int().nullable(),
    last_error: z.string().nullable(),
    created_at: z.string(),
  })
  .openapi("WebhookDelivery");
export type WebhookDelivery = z.infer<typeof WebhookDelivery>;
