/**
 * Standard Webhooks signing (https://www.standardwebhooks.com): a delivery carries `webhook-id`,
 * `webhook-timestamp` (unix seconds) and `webhook-signature`, a space-separated list of
 * `v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`, one per secret that signs now (several during a
 * rotation). Any official verifier (`standardwebhooks` on npm, PyPI, …) checks them with the `whsec_` secret.
 */
import { secretKeyBytes } from "./secrets.ts";

const encoder = new TextEncoder();

async function hmacBase64(secret: string, content: string): Promise<string> {
  const key = await crypto.subtle.importKey("raw", secretKeyBytes(secret), { name: "HMAC", hash: "SHA-256" }, false, [
    "sign",
  ]);
  const mac = new Uint8Array(await crypto.subtle.sign("HMAC", key, encoder.encode(content)));
  return btoa(String.fromCharCode(...mac));
}

/** The three headers of a delivery `id` with `body`, sent at `timestamp` (unix seconds), signed by each secret. */
export async function signatureHeaders(
  secrets: string[],
  id: string,
  timestamp: number,
  body: string,
): Promise<Record<string, string>> {
  const signatures = await Promise.all(
    secrets.map(async (s) => `v1,${await hmacBase64(s, `${id}.${timestamp}.${body}`)}`),
  );
  return { "webhook-id": id, "webhook-timestamp": String(timestamp), "webhook-signature": signatures.join(" ") };
}
