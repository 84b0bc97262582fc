import { drizzle, type AnyD1Database } from "drizzle-orm/d1";
import * as schema from "./schema.ts";

export * as schema from "./schema.ts";
export type { JobStatus } from "./schema.ts";

/** The typed database handle the edge uses; one per request (cheap). */
export function database(d1: AnyD1Database) {
  return drizzle(d1, { schema });
}
export type Db = ReturnType<typeof database>;

export * as jobsTable from "./queries/jobs.ts";
export * as tenantsTable from "./queries/tenants.ts";
export * as apiKeysTable from "./queries/api-keys.ts";
export * as modelsTable from "./queries/models.ts";
export * as addonsTable from "./queries/addons.ts";
export * as runnersTable from "./queries/runners.ts";
export * as auditTable from "./queries/audit.ts";
export * as usageTable from "./queries/usage.ts";
export * as webhooksTable from "./queries/webhooks.ts";
export * as usersTable from "./queries/users.ts";
export * as sessionsTable from "./queries/sessions.ts";
export * as invitesTable from "./queries/invites.ts";
export * as metricsTable from "./queries/metrics.ts";
