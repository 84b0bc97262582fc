/**
 * Composition: middleware order, the four surfaces (public `/v1`, runner `/internal/v1`, operator `/admin/v1`,
 * and the OpenAPI document), and the one error envelope.
 */
import type { OpenApiDocument } from "@imagegen/contracts/openapi";
import { database } from "@imagegen/db";
import { HTTPException } from "hono/http-exception";
import { adminAuth, runnerAuth, tenantAuth } from "./auth/middleware.ts";
import { router } from "./context.ts";
import { loadSettings } from "./env.ts";
import { ApiError, errorBody } from "./errors.ts";
import { rateLimit } from "./limits/middleware.ts";
import { jsonBody } from "./middleware/json-body.ts";
import { openApiDocuments } from "./openapi.ts";
import { requestId } from "./middleware/request-id.ts";
import { serverTiming, timedD1 } from "./middleware/server-timing.ts";
import { addons } from "./routes/addons.ts";
import { admin } from "./routes/admin.ts";
import { auth } from "./routes/auth.ts";
import { usage } from "./routes/usage.ts";
import { users } from "./routes/users.ts";
import { generations } from "./routes/generations.ts";
import { keys } from "./routes/keys.ts";
import { metrics } from "./routes/metrics.ts";
import { models } from "./routes/models.ts";
import { openai } from "./routes/openai.ts";
import { webhooks } from "./routes/webhooks.ts";
import { runnerApi } from "./runner-api/routes.ts";
import { dashboard } from "./dashboard/routes.ts";

/** JSON bodies above this size are refused (413); control images travel as data URLs, so it is not tiny. */
export const MAX_BODY_BYTES = 2 * 1024 * 1024;

export function createApp() {
  const app = router();

  app.use("*", requestId());
  app.use("*", serverTiming());
  app.use("*", async (c, next) => {
    c.set("db", database(timedD1(c.env.DB)));
    c.set("settings", loadSettings(c.env));
    await next();
  });
  app.use("*", jsonBody(MAX_BODY_BYTES));

  app.get("/healthz", (c) => c.json({ ok: true }));
  app.route("/dashboard", dashboard);

  // The public document only: the admin and runner documents are committed in contracts/openapi/.
  let publicDocument: OpenApiDocument | undefined;
  app.get("/v1/openapi.json", (c) => c.json((publicDocument ??= openApiDocuments(app).public)));

  // The order matters: authenticate, then rate-limit by tenant, then route. Signing in and up need no credential
  // (they are slowed by their own lockout, edge/src/users/lockout.ts).
  const open = new Set(["/v1/openapi.json", "/v1/auth/signin", "/v1/auth/signup"]);
  app.use("/v1/*", async (c, next) => (open.has(c.req.path) ? next() : tenantAuth()(c, next)));
  app.use("/v1/*", async (c, next) => (open.has(c.req.path) ? next() : rateLimit()(c, next)));
  app.route("/v1", generations);
  app.route("/v1", models);
  app.route("/v1", usage); // before addons: /v1/addons/warm is not an add-on id
  app.route("/v1", addons);
  app.route("/v1", keys);
  app.route("/v1", openai);
  app.route("/v1", webhooks);
  app.route("/v1", auth);
  app.route("/v1", users);

  app.use("/internal/v1/*", runnerAuth());
  app.route("/internal/v1", runnerApi);

  app.use("/admin/v1/*", adminAuth());
  app.route("/admin/v1", admin);
  app.route("/admin/v1", metrics);

  app.notFound((c) => {
    const err = new ApiError(404, "not_found_error", "route_not_found", `No route ${c.req.method} ${c.req.path}.`);
    return c.json(errorBody(err, c.get("requestId") ?? "unknown"), 404);
  });

  app.onError((err, c) => {
    const id = c.get("requestId") ?? "unknown";
    let apiErr: ApiError;
    if (err instanceof ApiError) apiErr = err;
    else if (err instanceof HTTPException)
      apiErr = new ApiError(err.status as 400, "invalid_request_error", "bad_request", err.message || "Bad request.");
    else {
      console.error(
        JSON.stringify({
          level: "error",
          request_id: id,
          path: c.req.path,
          error: String(err),
          stack: (err as Error).stack,
        }),
      );
      apiErr = new ApiError(
        500,
        "api_error",
        "internal_error",
        "An internal error occurred; retry, and quote the request id if it persists.",
      );
    }
    for (const [name, value] of Object.entries(apiErr.headers ?? {})) c.header(name, value);
    c.header("X-Request-Id", id);
    return c.json(errorBody(apiErr, id), apiErr.status);
  });

  return app;
}

export type App = ReturnType<typeof createApp>;
