import { OpenAPIHono, type Hook } from "@hono/zod-openapi";
import type { Scope } from "@imagegen/contracts/keys";
import type { Db, apiKeysTable, runnersTable, sessionsTable, tenantsTable, usersTable } from "@imagegen/db";
import type { Env as Bindings, Settings } from "./env.ts";
import { ApiError } from "./errors.ts";

/** Who calls the public API: a program with an API key, or a person signed in to the dashboard (session cookie). */
export interface TenantAuth {
  tenant: tenantsTable.Tenant;
  /** Set when an API key authenticated the request. */
  key?: apiKeysTable.ApiKey;
  /** Set (with `session`) when a session cookie did. */
  user?: usersTable.User;
  session?: sessionsTable.Session;
  /** The key's scopes, or those of the user's role (edge/src/users/roles.ts). */
  scopes: readonly Scope[];
  /** Who acts, for the audit log: the key's id or the user's id. */
  actor: string;
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
