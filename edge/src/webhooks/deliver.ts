/** One attempt at a delivery: sign, POST, record the outcome and when to try again. */
import { webhooksTable, type Db } from "@imagegen/db";
import { loadSettings, type Env } from "../env.ts";
import { refusedDestination } from "./destination.ts";
import { endpointRing, tenantRing } from "./keys.ts";
import { signingSecrets, type SecretRing } from "./secrets.ts";
import { signatureHeaders } from "./signature.ts";

type Outcome = { ok: boolean; status?: number; error?: string; final?: boolean };

/**
 * When to try again after failed attempt number `attempts` (1-based), or null when that was the last. Each wait is
 * spread ±20% so that deliveries that failed together (an endpoint down) do not all return at once.
 */
export function retryAt(backoffMs: number[], attempts: number, now: number): number | null {
  const wait = backoffMs[attempts - 1];
  return wait === undefined ? null : now + Math.round(wait * (0.8 + 0.4 * Math.random()));
}

/** Where the delivery goes and the secrets that sign it, or why it cannot go at all. */
async function destination(
  env: Env,
  db: Db,
  d: webhooksTable.Delivery,
  allowPrivate: boolean,
): Promise<{ url: string; ring: SecretRing } | { refused: string }> {
  const refused = refusedDestination(d.url, allowPrivate);
  if (refused) return { refused: `the URL ${refused}` };
  if (!d.endpointId) return { url: d.url, ring: await tenantRing(env, db, d.tenantId) };
  const endpoint = await webhooksTable.getEndpoint(db, d.tenantId, d.endpointId);
  if (!endpoint) return { refused: "the endpoint was deleted" };
  if (endpoint.disabledAt !== null) return { refused: "the endpoint is disabled" };
  return { url: d.url, ring: await endpointRing(env, db, endpoint) };
}

async function post(url: string, headers: Record<string, string>, body: string): Promise<Outcome> {
  try {
    // Redirects are not followed: a public host must not bounce a delivery to an address the check refused.
    const res = await fetch(url, {
      method: "POST",
      headers,
      body,
      redirect: "manual",
      signal: AbortSignal.timeout(10_000),
    });
    await res.body?.cancel();
    return { ok: res.ok, status: res.status };
  } catch (err) {
    return { ok: false, error: String((err as Error).message ?? err) };
  }
}

/** Attempts `d` now; returns the delivery as recorded after, or undefined when another attempt recorded first. */
export async function attemptDelivery(
  env: Env,
  db: Db,
  d: webhooksTable.Delivery,
): Promise<webhooksTable.Delivery | undefined> {
  const settings = loadSettings(env);
  const to = await destination(env, db, d, settings.allowPrivateWebhooks);
  let outcome: Outcome;
  if ("refused" in to) outcome = { ok: false, error: `not sent: ${to.refused}`, final: true };
  else {
    const body = JSON.stringify({ id: d.id, ...d.payload });
    const signed = await signatureHeaders(
      signingSecrets(to.ring, Date.now()),
      d.id,
      Math.floor(Date.now() / 1000),
      body,
    );
    outcome = await post(
      to.url,
      { "content-type": "application/json", "user-agent": "imagegen-webhooks/1", ...signed },
      body,
    );
  }
  const again =
    outcome.ok || outcome.final ? null : retryAt(settings.webhookRetryBackoffMs, d.attempts + 1, Date.now());
  return webhooksTable.recordAttempt(db, d, outcome, again);
}
