import type { MiddlewareHandler } from "hono";
import type { AppEnv } from "../context.ts";
import { ApiError } from "../errors.ts";

/**
 * Bodies are JSON objects of bounded size. Reading the body here (before validation) turns wrong content types,
 * oversized bodies and malformed JSON into clear errors; the parsed body is cached for the validators.
 */
export const jsonBody =
  (maxBytes: number): MiddlewareHandler<AppEnv> =>
  async (c, next) => {
    if (c.req.method === "GET" || c.req.method === "HEAD" || c.req.method === "DELETE" || c.req.method === "OPTIONS")
      return next();
    const length = c.req.header("content-length");
    const hasBody = c.req.raw.body !== null && length !== "0";
    if (!hasBody) return next();
    const type = c.req.header("content-type") ?? "";
    if (!/^application\/(?:[\w.+-]+\+)?json\s*(?:;|$)/i.test(type)) {
      throw new ApiError(
        415,
        "invalid_request_error",
        "unsupported_media_type",
        `Expected 'Content-Type: application/json', got '${type || "none"}'.`,
      );
    }
    if (length !== undefined && Number(length) > maxBytes) throw tooLarge(maxBytes);
    const bytes = await readLimited(c.req.raw, maxBytes);
    let parsed: unknown;
    try {
      parsed = JSON.parse(new TextDecoder().decode(bytes));
    } catch (err) {
      throw ApiError.invalid("invalid_json", `The body is not valid JSON: ${(err as Error).message}`);
    }
    if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
      throw ApiError.invalid("invalid_json", "The body must be a JSON object.");
    }
    // Hono's validators read c.req.json(), which returns this cached value.
    (c.req as unknown as { bodyCache: Record<string, unknown> }).bodyCache.json = Promise.resolve(parsed);
    await next();
  };

function tooLarge(maxBytes: number): ApiError {
  return new ApiError(413, "invalid_request_error", "body_too_large", `The body is larger than ${maxBytes} bytes.`);
}

async function readLimited(req: Request, maxBytes: number): Promise<Uint8Array> {
  const reader = req.body!.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > maxBytes) {
      await reader.cancel();
      throw tooLarge(maxBytes);
    }
    chunks.push(value);
  }
  const out = new Uint8Array(total);
  let at = 0;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.byteLength;
  }
  return out;
}
