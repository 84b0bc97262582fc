/** What a tenant used: generations and images per UTC day and per API key. */
import { z } from "@hono/zod-openapi";
import { Timestamp } from "./common.ts";

export const UsageQuery = z.object({
  days: z.coerce
    .number()
    .int()
    .min(1)
    .max(366)
    .default(30)
    .openapi({
      param: { name: "days", in: "query" },
      example: 30,
      description: "Days back from today (UTC), today included",
    }),
});

export const UsageDay = z.object({
  date: z.string().openapi({ example: "2026-12-02" }),
  images: z.number().int(),
  generations: z.number().int(),
  failed: z.number().int(),
});

export const UsageByKey = z.object({
  /** Null for generations made from the dashboard (a signed-in user, no key). */
  key_id: z.string().nullable(),
  key_name: z.string().openapi({ example: "dashboard" }),
  images: z.number().int(),
  generations: z.number().int(),
});

export const Usage = z
  .object({ days: z.array(UsageDay), keys: z.array(UsageByKey), since: Timestamp, until: Timestamp })
  .openapi("Usage");

/** Which add-on versions runners hold warm now (this tenant's and public ones). */
export const WarmAddonList = z
  .object({
    data: z.array(
      z.object({
        ref: z.string().openapi({ example: "addon_01hzy3k8m2q9w7e4r5t6y7u8i9@1" }),
        runners: z.number().int(),
      }),
    ),
  })
  .openapi("WarmAddonList");
