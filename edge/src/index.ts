/**
 * The Worker: HTTP through the Hono app; cron requeues expired leases, deletes outputs past retention, re-arms
 * webhook deliveries whose timer was lost and seals plain-text webhook secrets; the Durable Objects it binds.
 */
import { database } from "@imagegen/db";
import { createApp } from "./app.ts";
import { expireLeases } from "./dispatch/expiry.ts";
import type { Env } from "./env.ts";
import { objectStore } from "./storage/index.ts";
import { sweepOrphans, sweepRetention } from "./storage/retention.ts";
import { rearmOverdue } from "./webhooks/index.ts";
import { sealPlainSecrets } from "./webhooks/keys.ts";

export { Doorbell } from "./dispatch/doorbell.ts";
export { RateLimiter } from "./limits/rate-limiter.ts";
export { WebhookDeliverer } from "./webhooks/deliverer.ts";

const app = createApp();

export default {
  fetch: app.fetch,
  async scheduled(_controller, env, ctx) {
    const db = database(env.DB);
    const to = { env, db, waitUntil: (p: Promise<unknown>) => ctx.waitUntil(p) };
    ctx.waitUntil(
      Promise.all([
        expireLeases(to),
        sweepRetention(objectStore(env), db),
        sweepOrphans(objectStore(env), db),
        rearmOverdue(env, db),
        sealPlainSecrets(env, db),
      ]),
    );
  },
} satisfies ExportedHandler<Env>;
