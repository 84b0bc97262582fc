/** The operator's metrics (`/admin/v1/metrics`, ADMIN_TOKEN): what a Prometheus scrape or an autoscaler reads. */
import { createRoute, z } from "@hono/zod-openapi";
import { errorResponses } from "@imagegen/contracts";
import { router } from "../context.ts";
import { formatExposition, PROMETHEUS_CONTENT_TYPE } from "../metrics/exposition.ts";
import { queueMetrics } from "../metrics/queue.ts";

const scrape = createRoute({
  method: "get",
  path: "/metrics",
  operationId: "adminMetrics",
  tags: ["admin"],
  summary: "Queue and runner-pool metrics (Prometheus text format 0.0.4)",
  description:
    "Queue depth, images queued and the oldest queued job's age per model; leased jobs; live runners and their " +
    "capacity; jobs created and finished by status. For a Prometheus scrape or an autoscaler (KEDA, HPA on an " +
    "external metric): see infra/deploy/SCALING.md.",
  responses: {
    200: {
      description: "The metrics, in the Prometheus text exposition format",
      content: { "text/plain": { schema: z.string() } },
    },
    ...errorResponses(401, 403),
  },
});

export const metrics = router().openapi(scrape, async (c) => {
  const body = formatExposition(await queueMetrics(c.var.db, Date.now()));
  return c.text(body, 200, { "content-type": PROMETHEUS_CONTENT_TYPE, "cache-control": "no-store" });
});
