import type { MiddlewareHandler } from "hono";
import { newId } from "../lib/ids.ts";
import type { AppEnv } from "../context.ts";

/** Every answer carries `X-Request-Id`: the caller's, when it sent a sane one, else a new one. */
export const requestId = (): MiddlewareHandler<AppEnv> => async (c, next) => {
  const given = c.req.header("x-request-id");
  const id = given && /^[A-Za-z0-9._-]{8,128}$/.test(given) ? given : newId("req");
  c.set("requestId", id);
  c.header("X-Request-Id", id);
  await next();
};
