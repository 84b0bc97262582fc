/**
 * Per-tenant rate limiting: a token bucket in a Durable Object named by the tenant, so every request of any of its
 * keys, on any edge location, is counted in one place. The bucket holds `limit` tokens and refills `limit` per
 * minute; state lives in memory (a restart forgives, which a rate limiter may).
 */
import { DurableObject } from "cloudflare:workers";

export interface RateDecision {
  allowed: boolean;
  limit: number;
  remaining: number;
  /** Seconds until the bucket is full again. */
  resetSeconds: number;
  /** Seconds until one token is available (0 when allowed). */
  retryAfterSeconds: number;
}

export class RateLimiter extends DurableObject {
  private tokens = -1;
  private updatedAt = 0;

  async take(limitPerMinute: number, cost = 1, now = Date.now()): Promise<RateDecision> {
    const perMs = limitPerMinute / 60_000;
    if (this.tokens < 0) this.tokens = limitPerMinute;
    this.tokens = Math.min(limitPerMinute, this.tokens + (now - this.updatedAt) * perMs);
    this.updatedAt = now;
    const allowed = this.tokens >= cost;
    if (allowed) this.tokens -= cost;
    const missing = limitPerMinute - this.tokens;
    return {
      allowed,
      limit: limitPerMinute,
      remaining: Math.max(0, Math.floor(this.tokens)),
      resetSeconds: Math.ceil(missing / perMs / 1000),
      retryAfterSeconds: allowed ? 0 : Math.max(1, Math.ceil((cost - this.tokens) / perMs / 1000)),
    };
  }
}
