/**
 * Password hashing: PBKDF2-HMAC-SHA-256 through WebCrypto, the one slow KDF a Worker has natively. Workers cap PBKDF2
 * at 100,000 iterations (deriveBits throws above), so that is the count; each hash is stored with its own count, so
 * raising it later only needs new hashes, not a migration.
 */
export const PBKDF2_ITERATIONS = 100_000;
const SALT_BYTES = 16;
const HASH_BITS = 256;
const SCHEME = "pbkdf2-sha256";

const encoder = new TextEncoder();

function toBase64(bytes: Uint8Array): string {
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin);
}

function fromBase64(text: string): Uint8Array {
  return Uint8Array.from(atob(text), (ch) => ch.charCodeAt(0));
}

async function derive(password: string, salt: Uint8Array, iterations: number): Promise<Uint8Array> {
  // NFKC: the same passphrase typed on two keyboards (composed or decomposed accents) is the same password.
  const key = await crypto.subtle.importKey("raw", encoder.encode(password.normalize("NFKC")), "PBKDF2", false, [
    "deriveBits",
  ]);
  const bits = await crypto.subtle.deriveBits({ name: "PBKDF2", hash: "SHA-256", salt, iterations }, key, HASH_BITS);
  return new Uint8Array(bits);
}

/**
 * Hashes a password as `pbkdf2-sha256$<iterations>$<salt b64>$<hash b64>` with a fresh 16-byte salt.
 *
 * @example
 * const stored = await hashPassword("correct horse battery staple");
 * await verifyPassword("correct horse battery staple", stored); // true
 */
export async function hashPassword(password: string, iterations = PBKDF2_ITERATIONS): Promise<string> {
  const salt = crypto.getRandomValues(new Uint8Array(SALT_BYTES));
  return `${SCHEME}$${iterations}$${toBase64(salt)}$${toBase64(await derive(password, salt, iterations))}`;
}

/** Whether `password` matches `stored`, compared in constant time; false for a malformed or unknown scheme. */
export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  const [scheme, iter, salt, hash] = stored.split("$");
  const iterations = Number(iter);
  if (scheme !== SCHEME || !salt || !hash || !Number.isInteger(iterations) || iterations < 1) return false;
  const expected = fromBase64(hash);
  const actual = await derive(password, fromBase64(salt), iterations);
  if (actual.length !== expected.length) return false;
  let diff = 0;
  for (let i = 0; i < actual.length; i++) diff |= actual[i]! ^ expected[i]!;
  return diff === 0;
}

let dummy: Promise<string> | undefined;
/**
 * A hash no password matches, verified against when the email is unknown, so that a wrong email takes as long as a
 * wrong password and the timing does not say which emails have accounts.
 */
export const dummyHash = () => (dummy ??= hashPassword(crypto.randomUUID()));
