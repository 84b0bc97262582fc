/**
 * Webhooks (Standard Webhooks, https://www.standardwebhooks.com): endpoints a tenant registers, the signing
 * secrets, and the record of each delivery.
 */
import { z } from "@hono/zod-openapi";
import { Timestamp } from "./common.ts";
import { WEBHOOK_DELIVERY_STATUSES, WEBHOOK_EVENT_TYPES } from "./enums.ts";

/** How deliveries are signed; any Standard Webhooks verifier checks them with the `whsec_` secret. */
export const WEBHOOK_SIGNATURE_SCHEME =
  'standard-webhooks: webhook-signature = space-separated "v1,<base64 HMAC-SHA256 of <webhook-id>.<webhook-timestamp>.<body>>", keyed by the base64-decoded part of the secret after "whsec_"' as const;

export const WebhookEventType = z.enum(WEBHOOK_EVENT_TYPES).openapi("WebhookEventType");
export type WebhookEventType = z.infer<typeof WebhookEventType>;

export const WebhookSecret = z
  .object({
    secret: z.string().openapi({ example: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" }),
    scheme: z.literal(WEBHOOK_SIGNATURE_SCHEME),
    previous_secret_expires_at: Timestamp.nullable().openapi({
      description: "Until then, deliveries are also signed with the secret the last rotation replaced.",
    }),
  })
  .openapi("WebhookSecret");
export type WebhookSecret = z.infer<typeof WebhookSecret>;

export const RotateWebhookSecretBody = z
  .object({
    previous_secret_expires_in: z
      .number()
      .int()
      .min(0)
      .max(7 * 86_400)
      .default(86_400)
      .openapi({ description: "Seconds the replaced secret keeps signing alongside the new one (0: stop at once)." }),
  })
  .strict()
  .openapi("RotateWebhookSecretBody");

const EndpointUrl = z
  .url({ protocol: /^https?$/ })
  .max(2048)
  .openapi({ example: "https://example.com/hooks/imagegen" });

export const WebhookEndpoint = z
  .object({
    id: z.string(),
    object: z.literal("webhook_endpoint"),
    url: z.string(),
    events: z.array(WebhookEventType),
    disabled: z.boolean(),
    created_at: Timestamp,
  })
  .openapi("WebhookEndpoint");
export type WebhookEndpoint = z.infer<typeof WebhookEndpoint>;

/** An endpoint as created: the only answer besides `GET …/secret` that shows its secret. */
export const WebhookEndpointWithSecret = WebhookEndpoint.extend({ secret: z.string() }).openapi(
  "WebhookEndpointWithSecret",
);

export const CreateWebhookEndpointBody = z
  .object({
    url: EndpointUrl,
    events: z
      .array(WebhookEventType)
      .min(1)
      .default([...WEBHOOK_EVENT_TYPES]),
  })
  .strict()
  .openapi("CreateWebhookEndpointBody");

export const UpdateWebhookEndpointBody = z
  .object({
    url: EndpointUrl.optional(),
    events: z.array(WebhookEventType).min(1).optional(),
    disabled: z.boolean().optional(),
  })
  .strict()
  .openapi("UpdateWebhookEndpointBody");

export const ListWebhookDeliveriesQuery = z.object({
  endpoint_id: z.string().max(64).optional().openapi({ description: "Only the deliveries to this endpoint." }),
});

export const WebhookDeliveryStatus = z.enum(WEBHOOK_DELIVERY_STATUSES);

export const WebhookDelivery = z
  .object({
    id: z.string().openapi({
      description: "Also the `webhook-id` header: the same on every attempt, for receivers to deduplicate.",
    }),
    object: z.literal("webhook_delivery"),
    event: z.string(),
    url: z.string(),
    endpoint_id: z
      .string()
      .nullable()
      .openapi({ description: "The endpoint it went to; null for a request's own `webhook_url`." }),
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
