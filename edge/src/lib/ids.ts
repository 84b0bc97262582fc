/**
 * Ids are `<prefix>_<10 chars of time><16 chars of randomness>` in Crockford base32: unique, unguessable,
 * and sorted by creation time, so list order and pagination cursors are plain comparisons on the id.
 */
const ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz";

function encodeTime(ms: number): string {
  let out = "";
  let rest = ms;
  for (let i = 0; i < 10; i++) {
    out = ALPHABET[rest % 32] + out;
    rest = Math.floor(rest / 32);
  }
  return out;
}

export function randomBase32(length: number): string {
  const bytes = crypto.getRandomValues(new Uint8Array(length));
  let out = "";
  for (const b of bytes) out += ALPHABET[b % 32];
  return out;
}

export function newId(prefix: string, now = Date.now()): string {
  return `${prefix}_${encodeTime(now)}${randomBase32(16)}`;
}
