/** The Worker: HTTP through the Hono app; cron requeues expired leases, deletes outputs past retention and retries webhook deliveries; the Durable Objects it binds. */
import { database } from "@imagegen/db";
import { createApp } from "./app.ts";
import { expireLeases } from "./dispatch/expiry.ts";
import type { Env } from "./env.ts";
import { objectStore } from "./storage/index.ts";
import { sweepRetention } from "./storage/retention.ts";
import { deliverDue } from "./webhooks/index.ts";

export { Doorbell } from "./dispatch/doorbell.ts";
export { RateLimiter } from "./limits/rate-limiter.ts";

const app = createApp();

export default {
  fetch: app.fetch,
  async scheduled(_controller, env, ctx) {
    const db = database(env.DB);
    const to = { env, db, waitUntil: (p: Promise<unknown>) => ctx.waitUntil(p) };
    ctx.waitUntil(Promise.all([expireLeases(to), sweepRetention(objectStore(env), db), deliverDue(db)]));
  },
} satisfies ExportedHandler<Env>;
