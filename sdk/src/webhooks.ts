/**
 * Webhook signatures, Standard Webhooks (standardwebhooks.com): each delivery carries `webhook-id`,
 * `webhook-timestamp` (unix seconds) and `webhook-signature` (`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`,
 * several space-separated while a secret rotates); the secret is `whsec_` + base64 key bytes. WebCrypto only.
 *
 * @example
 * const event = await client.webhooks.verify(rawBody, request.headers, process.env.IMAGEGEN_WEBHOOK_SECRET);
 */
import type { Core, RequestOptions } from "./core.ts";
import { WebhookVerificationError } from "./errors.ts";
import { PagePromise } from "./pagination.ts";
import type { List, WebhookDelivery, WebhookSecret } from "./types.ts";

/** A delivery older or newer than this is refused: a replayed capture cannot be passed off as fresh. */
export const WEBHOOK_TOLERANCE_SECONDS = 5 * 60;

export type WebhookHeaders = Headers | Record<string, string | string[] | undefined>;

const encoder = new TextEncoder();

function header(headers: WebhookHeaders, name: string): string {
  const value = headers instanceof Headers ? headers.get(name) : (headers[name] ?? headers[name.toLowerCase()]);
  const one = Array.isArray(value) ? value[0] : value;
  if (!one) throw new WebhookVerificationError(`the ${name} header is missing`);
  return one;
}

function keyBytes(secret: string): Uint8Array<ArrayBuffer> {
  try {
    return Uint8Array.from(atob(secret.startsWith("whsec_") ? secret.slice(6) : secret), (c) => c.charCodeAt(0));
  } catch {
    throw new WebhookVerificationError("the webhook secret is not whsec_ followed by base64");
  }
}

async function signature(secret: string, id: string, timestamp: string, payload: string): Promise<string> {
  const key = await crypto.subtle.importKey("raw", keyBytes(secret), { name: "HMAC", hash: "SHA-256" }, false, [
    "sign",
  ]);
  const mac = new Uint8Array(await crypto.subtle.sign("HMAC", key, encoder.encode(`${id}.${timestamp}.${payload}`)));
  return btoa(String.fromCharCode(...mac));
}

/** Compares without an early exit, so the time taken does not tell how much of a forged signature was right. */
function sameString(a: string, b: string): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return diff === 0;
}

/**
 * Checks a delivery and returns its parsed body; throws WebhookVerificationError when a header is missing, the
 * timestamp is more than 5 minutes off, or no `v1` signature matches. `payload` must be the raw body, unparsed.
 */
export async function verifyWebhook<T = unknown>(
  payload: string | Uint8Array,
  headers: WebhookHeaders,
  secret: string,
  now = Date.now(),
): Promise<T> {
  const body = typeof payload === "string" ? payload : new TextDecoder().decode(payload);
  const id = header(headers, "webhook-id");
  const timestamp = header(headers, "webhook-timestamp");
  const signatures = header(headers, "webhook-signature");
  const seconds = Number(timestamp);
  if (!/^\d+$/.test(timestamp)) throw new WebhookVerificationError("the webhook-timestamp header is not unix seconds");
  if (Math.abs(now / 1000 - seconds) > WEBHOOK_TOLERANCE_SECONDS)
    throw new WebhookVerificationError(
      "the webhook timestamp is more than 5 minutes off: a stale or replayed delivery",
    );
  const expected = await signature(secret, id, timestamp, body);
  const matches = signatures.split(" ").some((s) => {
    const [version, sig] = s.split(",", 2);
    return version === "v1" && sig !== undefined && sameString(sig, expected);
  });
  if (!matches) throw new WebhookVerificationError("no webhook signature matches the secret");
  try {
    return JSON.parse(body) as T;
  } catch {
    throw new WebhookVerificationError("the webhook body is not JSON");
  }
}

/** The three headers a delivery of `payload` carries, signed with `secret` (for tests and local receivers). */
export async function signWebhook(
  payload: string,
  secret: string,
  id: string,
  now = Date.now(),
): Promise<Record<"webhook-id" | "webhook-timestamp" | "webhook-signature", string>> {
  const timestamp = String(Math.floor(now / 1000));
  return {
    "webhook-id": id,
    "webhook-timestamp": timestamp,
    "webhook-signature": `v1,${await signature(secret, id, timestamp, payload)}`,
  };
}

export class Webhooks {
  private readonly core: Core;
  constructor(core: Core) {
    this.core = core;
  }

  /** See `verifyWebhook`. */
  verify<T = unknown>(payload: string | Uint8Array, headers: WebhookHeaders, secret: string): Promise<T> {
    return verifyWebhook<T>(payload, headers, secret);
  }

  /** The secret that signs this tenant's deliveries. */
  async secret(opts: RequestOptions = {}): Promise<WebhookSecret> {
    return (await this.core.request<WebhookSecret>("GET", "/v1/webhooks/secret", opts)).data;
  }

  async rotateSecret(opts: RequestOptions = {}): Promise<WebhookSecret> {
    return (await this.core.request<WebhookSecret>("POST", "/v1/webhooks/secret/rotate", opts)).data;
  }

  /** Recent deliveries. */
  deliveries(opts: RequestOptions = {}): PagePromise<List<WebhookDelivery>> {
    return new PagePromise(
      async () => (await this.core.request<List<WebhookDelivery>>("GET", "/v1/webhooks/deliveries", opts)).data,
    );
  }

  async redeliver(id: string, opts: RequestOptions = {}): Promise<WebhookDelivery> {
    return (
      await this.core.request<WebhookDelivery>(
        "POST",
        `/v1/webhooks/deliveries/${encodeURIComponent(id)}/redeliver`,
        opts,
      )
    ).data;
  }
}
