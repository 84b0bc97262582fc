import { describe, expect, it } from "vitest";
import { isRetryableStatus, retryAfterMs, retryDelayMs } from "../src/retry.ts";

describe("retry policy", () => {
  it("retries 408, 429 and 5xx, and no other answer", () => {
    expect([408, 429, 500, 503].every(isRetryableStatus)).toBe(true);
    expect([400, 401, 404, 409, 422].some(isRetryableStatus)).toBe(false);
  });

  it("waits what Retry-After asks (seconds or a date, capped), else backs off exponentially with jitter", () => {
    expect(retryAfterMs(new Headers({ "retry-after": "2" }))).toBe(2_000);
    expect(retryAfterMs(new Headers({ "retry-after": "3600" }))).toBe(60_000);
    const date = retryAfterMs(new Headers({ "retry-after": new Date(Date.now() + 5_000).toUTCString() }))!;
    expect(date).toBeGreaterThan(3_000);
    expect(date).toBeLessThanOrEqual(5_000);
    expect(retryAfterMs(new Headers({ "retry-after": "soon" }))).toBeUndefined();
    expect(retryDelayMs(5, new Headers({ "retry-after": "1" }))).toBe(1_000);
    for (const attempt of [0, 3, 10]) {
      const d = retryDelayMs(attempt, undefined, { baseMs: 100, maxMs: 1_000 });
      const nominal = Math.min(1_000, 100 * 2 ** attempt);
      expect(d).toBeGreaterThanOrEqual(0.75 * nominal);
      expect(d).toBeLessThan(1.25 * nominal);
    }
  });
});
