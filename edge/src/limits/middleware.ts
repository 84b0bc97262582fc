import type { MiddlewareHandler } from "hono";
import type { AppEnv } from "../context.ts";
import { ApiError } from "../errors.ts";

/**
 * The tenant's rate limit, shared by all its keys: counted per key, a tenant could multiply its limit by minting
 * keys. The RateLimit-* headers go on every answer to an authenticated call, errors included.
 */
export const rateLimit = (): MiddlewareHandler<AppEnv> => async (c, next) => {
  const { tenant } = c.var.auth;
  const limit = tenant.rateLimitPerMinute ?? c.var.settings.defaultRateLimitPerMinute;
  const limiter = c.env.RATE_LIMITER.get(c.env.RATE_LIMITER.idFromName(`tenant:${tenant.id}`));
  const d = await limiter.take(limit);
  const headers: Record<string, string> = {
    "RateLimit-Limit": String(d.limit),
    "RateLimit-Remaining": String(d.remaining),
    "RateLimit-Reset": String(d.resetSeconds),
  };
  for (const [name, value] of Object.entries(headers)) c.header(name, value);
  if (!d.allowed) {
    throw new ApiError(
      429,
      "rate_limit_error",
      "rate_limit_exceeded",
      `Rate limit of ${d.limit} requests per minute exceeded for this tenant (all its API keys together); retry in ${d.retryAfterSeconds} s.`,
      undefined,
      { ...headers, "Retry-After": String(d.retryAfterSeconds) },
    );
  }
  await next();
};
