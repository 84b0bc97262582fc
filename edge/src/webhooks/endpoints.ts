/** Webhook endpoints a tenant registers: checked destinations, sealed secrets, and how the API shows them. */
import { webhooksTable, type Db } from "@imagegen/db";
import { iso, type WebhookDelivery, type WebhookEndpoint, type WebhookEventType } from "@imagegen/contracts";
import { loadSettings, type Env } from "../env.ts";
import { ApiError } from "../errors.ts";
import { newId } from "../lib/ids.ts";
import { refusedDestination } from "./destination.ts";
import { sealNewRing } from "./keys.ts";
import { newWebhookSecret } from "./secrets.ts";

/** Throws the 400 for a webhook URL this deployment will not send to (SSRF), naming `param`. */
export function assertWebhookDestination(env: Env, url: string, param: string): void {
  const refused = refusedDestination(url, loadSettings(env).allowPrivateWebhooks);
  if (refused)
    throw ApiError.invalid("webhook_url_refused", `${param} ${refused}; webhooks go to public hosts only.`, param);
}

export const presentEndpoint = (e: webhooksTable.Endpoint): WebhookEndpoint => ({
  id: e.id,
  object: "webhook_endpoint",
  url: e.url,
  events: e.events,
  disabled: e.disabledAt !== null,
  created_at: iso(e.createdAt)!,
});

export const presentDelivery = (d: webhooksTable.Delivery): WebhookDelivery => ({
  id: d.id,
  object: "webhook_delivery",
  event: d.event,
  url: d.url,
  endpoint_id: d.endpointId,
  generation_id: d.jobId,
  status: d.status,
  attempts: d.attempts,
  next_attempt_at: iso(d.nextAttemptAt),
  last_response_status: d.lastResponseStatus,
  last_error: d.lastError,
  created_at: iso(d.createdAt)!,
});

export async function createEndpoint(
  env: Env,
  db: Db,
  tenantId: string,
  body: { url: string; events: WebhookEventType[] },
) {
  assertWebhookDestination(env, body.url, "url");
  const id = newId("whe");
  const secret = newWebhookSecret();
  const endpoint = await webhooksTable.insertEndpoint(db, {
    id,
    tenantId,
    url: body.url,
    events: [...new Set(body.events)],
    secret: await sealNewRing(env, id, secret),
    createdAt: Date.now(),
  });
  return { ...presentEndpoint(endpoint), secret };
}

export async function updateEndpoint(
  env: Env,
  db: Db,
  tenantId: string,
  id: string,
  body: { url?: string; events?: WebhookEventType[]; disabled?: boolean },
) {
  if (body.url !== undefined) assertWebhookDestination(env, body.url, "url");
  const current = await webhooksTable.getEndpoint(db, tenantId, id);
  if (!current) throw ApiError.notFound("webhook endpoint", id, "id");
  if (body.url === undefined && body.events === undefined && body.disabled === undefined)
    return presentEndpoint(current);
  const disabledAt =
    body.disabled === undefined ? undefined : body.disabled ? (current.disabledAt ?? Date.now()) : null;
  const updated = await webhooksTable.updateEndpoint(db, tenantId, id, {
    url: body.url,
    events: body.events && [...new Set(body.events)],
    disabledAt,
  });
  if (!updated) throw ApiError.notFound("webhook endpoint", id, "id");
  return presentEndpoint(updated);
}
