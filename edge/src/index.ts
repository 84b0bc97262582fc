/** The Worker: HTTP through the Hono app; cron requeues expired leases and deletes outputs past retention; the Durable Objects it binds. */
import { database } from "@imagegen/db";
import { createApp } from "./app.ts";
import { expireLeases } from "./dispatch/expiry.ts";
import type { Env } from "./env.ts";
import { sweepRetention } from "./storage/retention.ts";

export { Doorbell } from "./dispatch/doorbell.ts";
export { RateLimiter } from "./limits/rate-limiter.ts";

const app = createApp();

export default {
  fetch: app.fetch,
  async scheduled(_controller, env, ctx) {
    const db = database(env.DB);
    ctx.waitUntil(Promise.all([expireLeases(env, db), sweepRetention(env, db)]));
  },
} satisfies ExportedHandler<Env>;
