/**
 * The retry policy of every HTTP client in the project (this SDK, and the runner's client of the runner API):
 * which answers are worth another attempt, and how long to wait before it. One policy, so a server that asks its
 * clients to slow down (`Retry-After` on a 429 or 503) is obeyed by all of them alike.
 *
 * @example
 * import { isRetryableStatus, retryDelayMs } from "@imagegen/sdk/retry";
 * if (isRetryableStatus(res.status)) await sleep(retryDelayMs(attempt, res.headers));
 */

/** Exponential backoff before retry n (0-based): min(maxMs, baseMs · 2^n), scaled by a jitter in [0.75, 1.25). */
export interface Backoff {
  baseMs: number;
  maxMs: number;
}

export const DEFAULT_BACKOFF: Backoff = { baseMs: 500, maxMs: 8_000 };

/** A server's Retry-After is obeyed up to this long; past it the client would rather fail than hang. */
export const MAX_RETRY_AFTER_MS = 60_000;

/**
 * Answers that may differ on another attempt: 408, 429 and 5xx. Other 4xx (409 lock contention included) are the
 * server's answer to this request and are returned to the caller.
 */
export function isRetryableStatus(status: number): boolean {
  return status === 408 || status === 429 || status >= 500;
}

/** The wait a `Retry-After` header asks for (seconds or an HTTP date), capped; undefined when there is none. */
export function retryAfterMs(headers?: Headers | null): number | undefined {
  const after = headers?.get("retry-after");
  if (!after) return undefined;
  const seconds = Number(after);
  if (Number.isFinite(seconds)) return Math.max(0, Math.min(MAX_RETRY_AFTER_MS, seconds * 1000));
  const date = Date.parse(after);
  if (Number.isFinite(date)) return Math.max(0, Math.min(MAX_RETRY_AFTER_MS, date - Date.now()));
  return undefined;
}

/** Backoff before retry `attempt` (0-based): Retry-After when the server gave one, else `backoff` with jitter. */
export function retryDelayMs(attempt: number, headers?: Headers | null, backoff: Backoff = DEFAULT_BACKOFF): number {
  return retryAfterMs(headers) ?? Math.min(backoff.maxMs, backoff.baseMs * 2 ** attempt) * (0.75 + Math.random() / 2);
}
