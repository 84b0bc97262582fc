import { OpenAPIHono, type Hook } from "@hono/zod-openapi";
import type { Db, apiKeysTable, runnersTable, tenantsTable } from "@imagegen/db";
import type { Env as Bindings, Settings } from "./env.ts";
import { ApiError } from "./errors.ts";

export interface TenantAuth {
  tenant: tenantsTable.Tenant;
  key: apiKeysTable.ApiKey;
}

export type AppEnv = {
  Bindings: Bindings;
  Variables: {
    requestId: string;
    db: Db;
    settings: Settings;
    auth: TenantAuth;
    runner: runnersTable.Runner;
  };
};

/** Validation failures of any request part become one 400 naming the first offending field. */
const validationHook: Hook<unknown, AppEnv, string, unknown> = (result) => {
  if (result.success) return;
  const issue = result.error.issues[0];
  const param = issue?.path
    .map((p) => (typeof p === "number" ? `[${p}]` : String(p)))
    .join(".")
    .replace(/\.\[/g, "[");
  const message = issue ? `${param ? `${param}: ` : ""}${issue.message}` : "Invalid request.";
  throw ApiError.invalid(
    issue?.code === "unrecognized_keys" ? "unknown_parameter" : "invalid_parameter",
    message,
    param || undefined,
  );
};

/** Every router is built here so they all share the validation hook (and so the OpenAPI registry). */
export const router = () => new OpenAPIHono<AppEnv>({ defaultHook: validationHook });
