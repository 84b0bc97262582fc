/**
 * Webhooks: when a generation ends (succeeded, failed, canceled), a delivery is recorded and POSTed to the
 * request's `webhook_url`, signed with the tenant's secret:
 *
 *   Imagegen-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">
 *
 * A delivery that does not get a 2xx is retried with backoff (10 s, 1 min, 5 min, 30 min, 2 h) by the cron,
 * then marked failed; tenants list deliveries and redeliver them.
 */
import { webhooksTable, type Db, type jobsTable } from "@imagegen/db";
import type { Env } from "../env.ts";
import { newSecret } from "../lib/crypto.ts";
import { newId } from "../lib/ids.ts";
import { loadPresentedJob } from "../generations/present.ts";

const encoder = new TextEncoder();

export async function sign(secret: string, timestamp: number, body: string): Promise<string> {
  const key = await crypto.subtle.importKey("raw", encoder.encode(secret), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const mac = await crypto.subtle.sign("HMAC", key, encoder.encode(`${timestamp}.${body}`));
  return [...new Uint8Array(mac)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

export const tenantWebhookSecret = (db: Db, tenantId: string) => webhooksTable.webhookSecret(db, tenantId, () => newSecret("whsec"));

/** Records the delivery for a generation that just ended, and sends it (in the background of the request). */
export async function generationEnded(env: Env, db: Db, job: jobsTable.Job, waitUntil: (p: Promise<unknown>) => void): Promise<void> {
  if (!job.webhookUrl) return;
  const now = Date.now();
  const delivery = await webhooksTable.insertDelivery(db, {
    id: newId("whd", now),
    tenantId: job.tenantId,
    url: job.webhookUrl,
    jobId: job.id,
    event: `generation.${job.status}`,
    payload: { type: `generation.${job.status}`, created_at: new Date(now).toISOString(), data: await loadPresentedJob(env, db, job) },
    status: "pending",
    nextAttemptAt: now,
    createdAt: now,
  });
  waitUntil(deliver(db, delivery));
}

export async function deliver(db: Db, d: webhooksTable.Delivery, now = Date.now()): Promise<webhooksTable.Delivery | undefined> {
  const body = JSON.stringify({ id: d.id, ...d.payload });
  const timestamp = Math.floor(now / 1000);
  const signature = await sign(await tenantWebhookSecret(db, d.tenantId), timestamp, body);
  let outcome: { ok: boolean; status?: number; error?: string };
  try {
    const res = await fetch(d.url, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        "user-agent": "imagegen-webhooks/1",
        "imagegen-event": d.event,
        "imagegen-delivery": d.id,
        "imagegen-signature": `t=${timestamp},v1=${signature}`,
      },
      body,
      signal: AbortSignal.timeout(10_000),
    });
    outcome = { ok: res.ok, status: res.status };
    await res.body?.cancel();
  } catch (err) {
    outcome = { ok: false, error: String((err as Error).message ?? err) };
  }
  return webhooksTable.recordAttempt(db, d, outcome, Date.now());
}

/** Sends every delivery whose time has come (cron). */
export async function deliverDue(db: Db, now = Date.now()): Promise<number> {
  const due = await webhooksTable.dueDeliveries(db, now);
  await Promise.all(due.map((d) => deliver(db, d, now)));
  return due.length;
}
