/** What a tenant used (per day, per key) and which of its add-ons runners hold warm: the dashboard's overview. */
import { createRoute } from "@hono/zod-openapi";
import { errorResponses, iso, Usage, UsageQuery, WarmAddonList } from "@imagegen/contracts";
import { usageTable } from "@imagegen/db";
import { requireScope } from "../auth/middleware.ts";
import { router } from "../context.ts";

/** A runner not heard from for this long no longer counts as holding anything warm. */
export const WARM_RUNNER_SEEN_MS = 2 * 60_000;
const DAY_MS = 86_400_000;

export const usage = router()
  .openapi(
    createRoute({
      method: "get",
      path: "/usage",
      operationId: "getUsage",
      tags: ["usage"],
      summary: "Generations and images per UTC day and per API key (dashboard-made ones under key_name 'dashboard')",
      request: { query: UsageQuery },
      responses: {
        200: { description: "Usage", content: { "application/json": { schema: Usage } } },
        ...errorResponses(400, 401, 403, 429),
      },
    }),
    async (c) => {
      requireScope(c, "generations:read");
      const { days } = c.req.valid("query");
      const now = Date.now();
      const since = Math.floor(now / DAY_MS) * DAY_MS - (days - 1) * DAY_MS;
      const rows = await usageTable.usageSince(c.var.db, c.var.auth.tenant.id, since);
      // Every day of the range, zero ones included, so a chart needs no gap filling.
      const byDay = new Map<string, { date: string; images: number; generations: number; failed: number }>();
      for (let t = since; t <= now; t += DAY_MS) {
        const date = usageTable.utcDay(t);
        byDay.set(date, { date, images: 0, generations: 0, failed: 0 });
      }
      const byKey = new Map<
        string | null,
        { key_id: string | null; key_name: string; images: number; generations: number }
      >();
      for (const r of rows) {
        const day = byDay.get(r.day);
        if (day) {
          day.images += r.images;
          day.generations += r.generations;
          day.failed += r.failed;
        }
        const key = byKey.get(r.keyId) ?? {
          key_id: r.keyId,
          key_name: r.keyId === null ? "dashboard" : (r.keyName ?? r.keyId),
          images: 0,
          generations: 0,
        };
        key.images += r.images;
        key.generations += r.generations;
        byKey.set(r.keyId, key);
      }
      return c.json(
        {
          days: [...byDay.values()],
          keys: [...byKey.values()].sort((a, b) => b.generations - a.generations),
          since: iso(since)!,
          until: iso(now)!,
        },
        200,
      );
    },
  )
  .openapi(
    createRoute({
      method: "get",
      path: "/addons/warm",
      operationId: "listWarmAddons",
      tags: ["addons"],
      summary: "Add-on versions runners hold warm now (this tenant's and public ones)",
      responses: {
        200: { description: "Warm add-ons", content: { "application/json": { schema: WarmAddonList } } },
        ...errorResponses(401, 403, 429),
      },
    }),
    async (c) => {
      requireScope(c, "addons:read");
      const rows = await usageTable.warmAddons(c.var.db, c.var.auth.tenant.id, Date.now() - WARM_RUNNER_SEEN_MS);
      return c.json({ data: rows.map((r) => ({ ref: r.ref, runners: Number(r.runners) })) }, 200);
    },
  );
