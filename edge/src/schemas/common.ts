import { z } from "@hono/zod-openapi";

export const ErrorSchema = z
  .object({
    error: z.object({
      type: z.string().openapi({ example: "invalid_request_error" }),
      code: z.string().openapi({ example: "invalid_parameter" }),
      message: z.string(),
      param: z.string().optional(),
      request_id: z.string(),
    }),
  })
  .openapi("Error");

/** Error answers every operation may give, for the OpenAPI document. */
export function errorResponses(...statuses: number[]) {
  const descriptions: Record<number, string> = {
    400: "Invalid request",
    401: "Missing or invalid credentials",
    403: "Not allowed",
    404: "Not found (or not visible to this tenant)",
    409: "Conflict with the resource's state",
    413: "Body too large",
    415: "Body is not JSON",
    422: "Idempotency key reused with another body",
    429: "Rate limit or quota exceeded",
  };
  return Object.fromEntries(
    statuses.map((s) => [
      s,
      { description: descriptions[s] ?? "Error", content: { "application/json": { schema: ErrorSchema } } },
    ]),
  );
}

export const IdParam = (name: string, example: string) =>
  z.object({ id: z.string().min(1).max(64).openapi({ param: { name: "id", in: "path" }, example, description: name }) });

export const Timestamp = z.string().openapi({ format: "date-time", example: "2026-11-22T10:00:00.000Z" });
export const iso = (ms: number | null | undefined) => (ms == null ? null : new Date(ms).toISOString());
