/**
 * Webhook signing secrets: `whsec_` + standard base64 of 32 random bytes (the Standard Webhooks format; the HMAC
 * key is the decoded bytes). The edge must sign, so secrets cannot be hashed: they are stored sealed with AES-GCM
 * under `WEBHOOK_SECRET_KEY` (a Worker secret, base64 of 32 bytes), bound to the row that owns them.
 *
 * What is sealed is a ring: the current secret first, then secrets replaced by a rotation, each until it expires,
 * so that receivers that still hold the old secret keep verifying during the switch.
 *
 * Rows written before sealing hold the plain secret (`whsec_<base64url>`): `openRing` reads such a value as the
 * same key bytes in standard base64, and its callers write it back sealed (the cron also seals any left).
 */

export interface RingKey {
  secret: string;
  /** Epoch ms after which a replaced secret no longer signs; absent for the current one. */
  expiresAt?: number;
}
export type SecretRing = RingKey[];

const SEALED = "enc1:";
const encoder = new TextEncoder();

const toBase64 = (bytes: Uint8Array) => btoa(String.fromCharCode(...bytes));
const fromBase64 = (text: string) =>
  Uint8Array.from(atob(text.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));

/** A new signing secret, as Standard Webhooks libraries read it. */
export const newWebhookSecret = (): string => `whsec_${toBase64(crypto.getRandomValues(new Uint8Array(32)))}`;

/** The HMAC key of a secret: the bytes its base64 part stands for. */
export const secretKeyBytes = (secret: string): Uint8Array => fromBase64(secret.replace(/^whsec_/, ""));

/** The secrets that sign now, current first. */
export const signingSecrets = (ring: SecretRing, now: number): string[] =>
  ring.filter((k) => k.expiresAt === undefined || k.expiresAt > now).map((k) => k.secret);

/**
 * The ring after a rotation: `secret` becomes current; the old current keeps signing for `graceMs`, older ones
 * until they expire. A grace of 0 (a leaked secret) drops every old secret at once.
 */
export function rotatedRing(ring: SecretRing, secret: string, now: number, graceMs: number): SecretRing {
  if (graceMs <= 0) return [{ secret }];
  const [current, ...older] = ring;
  return [
    { secret },
    ...(current ? [{ secret: current.secret, expiresAt: now + graceMs }] : []),
    ...older.filter((k) => (k.expiresAt ?? 0) > now),
  ];
}

async function sealingKey(keyBase64: string | undefined): Promise<CryptoKey> {
  if (!keyBase64) throw new Error("WEBHOOK_SECRET_KEY is not set: webhook secrets cannot be sealed or read");
  const raw = fromBase64(keyBase64);
  if (raw.byteLength !== 32) throw new Error("WEBHOOK_SECRET_KEY must be the base64 of 32 bytes");
  return crypto.subtle.importKey("raw", raw, "AES-GCM", false, ["encrypt", "decrypt"]);
}

/** The ring as stored: `enc1:<iv>:<ciphertext>`, bound to `owner` (the row's id) so a sealed value cannot be moved. */
export async function sealRing(keyBase64: string | undefined, owner: string, ring: SecretRing): Promise<string> {
  const iv = crypto.getRandomValues(new Uint8Array(12));
  const ciphertext = await crypto.subtle.encrypt(
    { name: "AES-GCM", iv, additionalData: encoder.encode(owner) },
    await sealingKey(keyBase64),
    encoder.encode(JSON.stringify(ring)),
  );
  return `${SEALED}${toBase64(iv)}:${toBase64(new Uint8Array(ciphertext))}`;
}

/** The ring a stored value holds; `plain` says it was stored before sealing and should be written back sealed. */
export async function openRing(
  keyBase64: string | undefined,
  owner: string,
  stored: string,
): Promise<{ ring: SecretRing; plain: boolean }> {
  if (!stored.startsWith(SEALED))
    return { ring: [{ secret: `whsec_${toBase64(secretKeyBytes(stored))}` }], plain: true };
  const [iv, ciphertext] = stored.slice(SEALED.length).split(":");
  const plaintext = await crypto.subtle.decrypt(
    { name: "AES-GCM", iv: fromBase64(iv!), additionalData: encoder.encode(owner) },
    await sealingKey(keyBase64),
    fromBase64(ciphertext!),
  );
  return { ring: JSON.parse(new TextDecoder().decode(plaintext)) as SecretRing, plain: false };
}

export const isSealed = (stored: string) => stored.startsWith(SEALED);
