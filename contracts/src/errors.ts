/**
 * The one error body, `{ error: { type, code, message, param?, request_id } }`, and the error answers each
 * operation declares in the OpenAPI documents.
 */
import { z } from "@hono/zod-openapi";
import { ERROR_TYPES } from "./enums.ts";

export const ErrorType = z.enum(ERROR_TYPES).openapi({ example: "invalid_request_error" });
export type ErrorType = z.infer<typeof ErrorType>;

export const ErrorSchema = z
  .object({
    error: z.object({
      type: ErrorType,
      code: z.string().openapi({ example: "invalid_parameter" }),
      message: z.string(),
      param: z.string().optional(),
      request_id: z.string(),
    }),
  })
  .openapi("Error");
export type ErrorBody = z.infer<typeof ErrorSchema>;

const DESCRIPTIONS: Record<number, string> = {
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

/** Error answers an operation may give, for the OpenAPI document. */
export function errorResponses(...statuses: number[]) {
  return Object.fromEntries(
    statuses.map((s) => [
      s,
      { description: DESCRIPTIONS[s] ?? "Error", content: { "application/json": { schema: ErrorSchema } } },
    ]),
  );
}
