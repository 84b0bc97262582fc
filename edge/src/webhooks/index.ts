/**
 * Webhooks: when a generation ends (succeeded, failed, canceled), one delivery is recorded for the request's
 * `webhook_url` (signed with the tenant's secret) and one for each enabled endpoint subscribed to the event
 * (signed with the endpoint's secret), then sent by its own timer (deliverer.ts) and retried with backoff until
 * delivered or out of attempts. Signing follows Standard Webhooks (signature.ts); secrets are sealed at rest
 * (secrets.ts, keys.ts); private destinations are refused unless the deployment allows them (destination.ts).
 */
import { webhooksTable, type Db, type jobsTable } from "@imagegen/db";
import type { WebhookEventType } from "@imagegen/contracts";
import type { Env } from "../env.ts";
import { newId } from "../lib/ids.ts";
import { loadPresentedJob } from "../generations/present.ts";
import { scheduleDelivery } from "./deliverer.ts";

/** Records the deliveries for a generation that just ended, and arms their timers (in the background of the request). */
export async function generationEnded(
  env: Env,
  db: Db,
  job: jobsTable.Job,
  waitUntil: (p: Promise<unknown>) => void,
  /** The tenant's endpoints for this event, when the caller read them with the change (no round trip of their own). */
  subscribed?: webhooksTable.Endpoint[],
): Promise<void> {
  const event = `generation.${job.status}` as WebhookEventType;
  const endpoints = subscribed ?? (await webhooksTable.endpointsFor(db, job.tenantId, event));
  const targets = [
    ...(job.webhookUrl ? [{ url: job.webhookUrl, endpointId: null }] : []),
    ...endpoints.map((e) => ({ url: e.url, endpointId: e.id })),
  ];
  if (targets.length === 0) return;
  const now = Date.now();
  const payload = { type: event, timestamp: new Date(now).toISOString(), data: await loadPresentedJob(env, db, job) };
  const deliveries = await webhooksTable.insertDeliveries(
    db,
    targets.map((t) => ({
      id: newId("whd", now),
      tenantId: job.tenantId,
      ...t,
      jobId: job.id,
      event,
      payload,
      status: "pending",
      nextAttemptAt: now,
      createdAt: now,
    })),
  );
  waitUntil(Promise.all(deliveries.map((d) => scheduleDelivery(env, d))));
}

/**
 * Re-arms deliveries whose timer was lost (the request that recorded them died before arming it): the cron's
 * safety net, not the retry path. Returns how many it re-armed.
 */
export async function rearmOverdue(env: Env, db: Db, now = Date.now()): Promise<number> {
  const overdue = await webhooksTable.overdueDeliveries(db, now - 60_000);
  await Promise.all(overdue.map((d) => scheduleDelivery(env, d)));
  return overdue.length;
}
