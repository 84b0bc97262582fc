/** The Worker: HTTP through the Hono app; cron requeues expired leases; the Durable Objects it binds. */
import { database } from "@imagegen/db";
import { createApp } from "./app.ts";
import { expireLeases } from "./dispatch/expiry.ts";
import type { Env } from "./env.ts";

export { Doorbell } from "./dispatch/doorbell.ts";
export { RateLimiter } from "./limits/rate-limiter.ts";

const app = createApp();

export default {
  fetch: app.fetch,
  async scheduled(_controller, env, ctx) {
    ctx.waitUntil(expireLeases(env, database(env.DB)));
  },
} satisfies ExportedHandler<Env>;
