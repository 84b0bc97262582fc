import { z } from "@hono/zod-openapi";

export const IdParam = (name: string, example: string) =>
  z.object({
    id: z
      .string()
      .min(1)
      .max(64)
      .openapi({ param: { name: "id", in: "path" }, example, description: name }),
  });

export const Timestamp = z.string().openapi({ format: "date-time", example: "2026-11-22T10:00:00.000Z" });
/** Times are integer milliseconds in the database and ISO 8601 strings on the wire. */
export const iso = (ms: number | null | undefined) => (ms == null ? null : new Date(ms).toISOString());
