/** The operator's API (`/admin/v1`, ADMIN_TOKEN): tenants, their keys and limits, runners, models, demo add-ons. */
import { createRoute, z } from "@hono/zod-openapi";
import { addonsTable, auditTable, modelsTable, runnersTable, tenantsTable } from "@imagegen/db";
import { presentAddon } from "../addons/present.ts";
import { audit } from "../audit/log.ts";
import { createKey } from "../auth/keys.ts";
import { forgetRunnerTokens } from "../auth/middleware.ts";
import { createInvite } from "../users/invites.ts";
import { RUNNER_TOKEN_PREFIX } from "../auth/secrets.ts";
import { type AppEnv, router } from "../context.ts";
import type { Context } from "hono";
import type { Settings } from "../env.ts";
import { ApiError } from "../errors.ts";
import { newSecret, sha256Hex } from "../lib/crypto.ts";
import { newId } from "../lib/ids.ts";
import {
  AdminCreateInviteBody,
  Addon,
  CreatedApiKey,
  CreatedInvite,
  CreatedRunner,
  CreateKeyBody,
  Runner,
  RunnerList,
  CreateRunnerBody,
  CreateTenantBody,
  errorResponses,
  IdParam,
  iso,
  Model,
  RegisterAddonBody,
  Tenant,
  UpdateTenantBody,
  UpsertModelBody,
} from "@imagegen/contracts";
import { forgetModels } from "../models/cache.ts";
import { presentModel } from "../models/present.ts";
import { DEFAULT_RETENTION_DAYS } from "../storage/retention.ts";

function presentTenant(t: tenantsTable.Tenant, s: Settings): z.infer<typeof Tenant> {
  return {
    id: t.id,
    object: "tenant",
    name: t.name,
    status: t.status,
    limits: {
      max_concurrent_jobs: t.maxConcurrentJobs ?? s.defaultMaxConcurrentJobs,
      max_images_per_day: t.maxImagesPerDay ?? s.defaultMaxImagesPerDay,
      rate_limit_per_minute: t.rateLimitPerMinute ?? s.defaultRateLimitPerMinute,
      retention_days: t.retentionDays ?? DEFAULT_RETENTION_DAYS,
      max_api_keys: t.maxApiKeys ?? s.defaultMaxApiKeys,
    },
    created_at: iso(t.createdAt)!,
  };
}

const limitsToColumns = (l: z.infer<typeof CreateTenantBody>["limits"]) => ({
  ...(l?.max_concurrent_jobs !== undefined ? { maxConcurrentJobs: l.max_concurrent_jobs } : {}),
  ...(l?.max_images_per_day !== undefined ? { maxImagesPerDay: l.max_images_per_day } : {}),
  ...(l?.rate_limit_per_minute !== undefined ? { rateLimitPerMinute: l.rate_limit_per_minute } : {}),
  ...(l?.retention_days !== undefined ? { retentionDays: l.retention_days } : {}),
  ...(l?.max_api_keys !== undefined ? { maxApiKeys: l.max_api_keys } : {}),
});

const json = <T extends z.ZodType>(schema: T) => ({ content: { "application/json": { schema } }, required: true });
const ok = <T extends z.ZodType>(schema: T, description: string) => ({
  description,
  content: { "application/json": { schema } },
});
const TenantId = IdParam("tenant id", "ten_01hzy3k8m2q9w7e4r5t6y7u8i9");
const RunnerId = IdParam("runner id", "run_01hzy3k8m2q9w7e4r5t6y7u8i9");

function presentRunner(r: runnersTable.RunnerWithLeases): z.infer<typeof Runner> {
  return {
    id: r.id,
    object: "runner",
    name: r.name,
    status: r.revokedAt !== null ? "revoked" : r.status,
    capacity: r.capacity,
    active_leases: r.activeLeases,
    warm_addons: r.warmAddons,
    models: r.models,
    last_seen_at: iso(r.lastSeenAt),
    created_at: iso(r.createdAt)!,
    revoked_at: iso(r.revokedAt),
  };
}

/** Applies an operator's change to a runner that is not revoked (revocation is final) and records it. */
async function changeRunner(
  c: Context<AppEnv>,
  id: string,
  patch: Parameters<typeof runnersTable.updateRunner>[2],
  action: string,
) {
  const changed = await runnersTable.updateRunner(c.var.db, id, patch);
  forgetRunnerTokens(c.env);
  const runner = await runnersTable.getRunner(c.var.db, id, Date.now());
  if (!runner) throw ApiError.notFound("runner", id, "id");
  if (!changed) throw ApiError.conflict("runner_revoked", `Runner '${id}' was revoked; register a new one.`);
  await audit(c, { actor: "admin", action, target: id });
  return runner;
}

export const admin = router()
  .openapi(
    createRoute({
      method: "post",
      path: "/tenants",
      operationId: "adminCreateTenant",
      tags: ["admin"],
      summary: "Create a tenant",
      request: { body: json(CreateTenantBody) },
      responses: { 201: ok(Tenant, "Created"), ...errorResponses(400, 401, 403) },
    }),
    async (c) => {
      const body = c.req.valid("json");
      const tenant = await tenantsTable.insertTenant(c.var.db, {
        id: newId("ten"),
        name: body.name,
        createdAt: Date.now(),
        ...limitsToColumns(body.limits),
      });
      await audit(c, {
        tenantId: tenant.id,
        actor: "admin",
        action: "tenant.create",
        target: tenant.id,
        details: { name: body.name },
      });
      return c.json(presentTenant(tenant, c.var.settings), 201);
    },
  )
  .openapi(
    createRoute({
      method: "get",
      path: "/tenants",
      operationId: "adminListTenants",
      tags: ["admin"],
      summary: "List tenants",
      responses: {
        200: ok(z.object({ object: z.literal("list"), data: z.array(Tenant) }), "Tenants"),
        ...errorResponses(401, 403),
      },
    }),
    async (c) =>
      c.json(
        {
          object: "list" as const,
          data: (await tenantsTable.listTenants(c.var.db)).map((t) => presentTenant(t, c.var.settings)),
        },
        200,
      ),
  )
  .openapi(
    createRoute({
      method: "patch",
      path: "/tenants/{id}",
      operationId: "adminUpdateTenant",
      tags: ["admin"],
      summary: "Update a tenant's name, status or limits",
      request: { params: TenantId, body: json(UpdateTenantBody) },
      responses: { 200: ok(Tenant, "Updated"), ...errorResponses(400, 401, 403, 404) },
    }),
    async (c) => {
      const { id } = c.req.valid("param");
      const body = c.req.valid("json");
      const tenant = await tenantsTable.updateTenant(c.var.db, id, {
        ...(body.name ? { name: body.name } : {}),
        ...(body.status ? { status: body.status } : {}),
        ...limitsToColumns(body.limits),
      });
      if (!tenant) throw ApiError.notFound("tenant", id, "id");
      await audit(c, { tenantId: id, actor: "admin", action: "tenant.update", target: id, details: body });
      return c.json(presentTenant(tenant, c.var.settings), 200);
    },
  )
  .openapi(
    createRoute({
      method: "post",
      path: "/tenants/{id}/keys",
      operationId: "adminCreateTenantKey",
      tags: ["admin"],
      summary: "Create an API key for a tenant (the secret is shown once)",
      request: { params: TenantId, body: json(CreateKeyBody) },
      responses: { 201: ok(CreatedApiKey, "Created"), ...errorResponses(400, 401, 403, 404) },
    }),
    async (c) => {
      const { id } = c.req.valid("param");
      const tenant = await tenantsTable.getTenant(c.var.db, id);
      if (!tenant) throw ApiError.notFound("tenant", id, "id");
      return c.json(await createKey(c, tenant, c.req.valid("json"), "admin"), 201);
    },
  )
  .openapi(
    createRoute({
      method: "post",
      path: "/tenants/{id}/invites",
      operationId: "adminCreateTenantInvite",
      tags: ["admin"],
      summary: "Invite a person into a tenant (its first owner; the link is shown once)",
      request: { params: TenantId, body: json(AdminCreateInviteBody) },
      responses: { 201: ok(CreatedInvite, "Created"), ...errorResponses(400, 401, 403, 404, 409) },
    }),
    async (c) => {
      const { id } = c.req.valid("param");
      const tenant = await tenantsTable.getTenant(c.var.db, id);
      if (!tenant) throw ApiError.notFound("tenant", id, "id");
      return c.json(await createInvite(c, tenant, c.req.valid("json"), "admin"), 201);
    },
  )
  .openapi(
    createRoute({
      method: "post",
      path: "/runners",
      operationId: "adminCreateRunner",
      tags: ["admin"],
      summary: "Register a runner and issue its token (shown once)",
      request: { body: json(CreateRunnerBody) },
      responses: { 201: ok(CreatedRunner, "Created"), ...errorResponses(400, 401, 403) },
    }),
    async (c) => {
      const body = c.req.valid("json");
      const token = newSecret(RUNNER_TOKEN_PREFIX);
      const runner = await runnersTable.insertRunner(c.var.db, {
        id: newId("run"),
        name: body.name,
        capacity: body.capacity,
        tokenHash: await sha256Hex(token),
        createdAt: Date.now(),
      });
      await audit(c, { actor: "admin", action: "runner.create", target: runner.id, details: { name: body.name } });
      return c.json({ ...presentRunner({ ...runner, activeLeases: 0 }), token }, 201);
    },
  )
  .openapi(
    createRoute({
      method: "get",
      path: "/runners",
      operationId: "adminListRunners",
      tags: ["admin"],
      summary: "List runners, revoked ones included, with the leases each holds",
      responses: { 200: ok(RunnerList, "Runners"), ...errorResponses(401, 403) },
    }),
    async (c) =>
      c.json(
        { object: "list" as const, data: (await runnersTable.listRunners(c.var.db, Date.now())).map(presentRunner) },
        200,
      ),
  )
  .openapi(
    createRoute({
      method: "post",
      path: "/runners/{id}/disable",
      operationId: "adminDisableRunner",
      tags: ["admin"],
      summary: "Disable a runner: its token is refused until it is enabled again (its leases expire)",
      request: { params: RunnerId },
      responses: { 200: ok(Runner, "Disabled"), ...errorResponses(401, 403, 404, 409) },
    }),
    async (c) =>
      c.json(
        presentRunner(await changeRunner(c, c.req.valid("param").id, { status: "disabled" }, "runner.disable")),
        200,
      ),
  )
  .openapi(
    createRoute({
      method: "post",
      path: "/runners/{id}/enable",
      operationId: "adminEnableRunner",
      tags: ["admin"],
      summary: "Enable a disabled runner",
      request: { params: RunnerId },
      responses: { 200: ok(Runner, "Enabled"), ...errorResponses(401, 403, 404, 409) },
    }),
    async (c) =>
      c.json(presentRunner(await changeRunner(c, c.req.valid("param").id, { status: "active" }, "runner.enable")), 200),
  )
  .openapi(
    createRoute({
      method: "post",
      path: "/runners/{id}/rotate",
      operationId: "adminRotateRunnerToken",
      tags: ["admin"],
      summary: "Issue a runner a new token (shown once); the old one stops working at once",
      request: { params: RunnerId },
      responses: { 200: ok(CreatedRunner, "Rotated"), ...errorResponses(401, 403, 404, 409) },
    }),
    async (c) => {
      const token = newSecret(RUNNER_TOKEN_PREFIX);
      const runner = await changeRunner(
        c,
        c.req.valid("param").id,
        { tokenHash: await sha256Hex(token) },
        "runner.rotate",
      );
      return c.json({ ...presentRunner(runner), token }, 200);
    },
  )
  .openapi(
    createRoute({
      method: "delete",
      path: "/runners/{id}",
      operationId: "adminRevokeRunner",
      tags: ["admin"],
      summary: "Revoke a runner for good: its token stops working; the record stays for the audit trail",
      request: { params: RunnerId },
      responses: { 200: ok(Runner, "Revoked (or already revoked)"), ...errorResponses(401, 403, 404) },
    }),
    async (c) => {
      const { id } = c.req.valid("param");
      const now = Date.now();
      // No token hashes to this value (hashes are hex), so the runner can never authenticate again.
      const revoked = await runnersTable.updateRunner(c.var.db, id, {
        status: "disabled",
        revokedAt: now,
        tokenHash: `revoked:${id}`,
      });
      forgetRunnerTokens(c.env);
      const runner = await runnersTable.getRunner(c.var.db, id, now);
      if (!runner) throw ApiError.notFound("runner", id, "id");
      if (revoked) await audit(c, { actor: "admin", action: "runner.revoke", target: id });
      return c.json(presentRunner(runner), 200);
    },
  )
  .openapi(
    createRoute({
      method: "put",
      path: "/models/{id}",
      operationId: "adminPutModel",
      tags: ["admin"],
      summary: "Register or update a model",
      request: { params: IdParam("model id", "tiny-shapes"), body: json(UpsertModelBody) },
      responses: { 200: ok(Model, "Registered"), ...errorResponses(400, 401, 403) },
    }),
    async (c) => {
      const { id } = c.req.valid("param");
      const body = c.req.valid("json");
      const now = Date.now();
      const model = await modelsTable.upsertModel(c.var.db, {
        id,
        family: body.family,
        displayName: body.display_name,
        spec: body.spec,
        status: body.status,
        createdAt: now,
        updatedAt: now,
      });
      forgetModels(c.env);
      await audit(c, {
        actor: "admin",
        action: "model.upsert",
        target: id,
        details: { family: body.family, status: body.status },
      });
      return c.json(presentModel(model), 200);
    },
  )
  .openapi(
    createRoute({
      method: "post",
      path: "/addons",
      operationId: "adminRegisterAddon",
      tags: ["admin"],
      summary: "Register an add-on already in storage (demo and public add-ons)",
      request: { body: json(RegisterAddonBody) },
      responses: { 201: ok(Addon, "Registered"), ...errorResponses(400, 401, 403, 404) },
    }),
    async (c) => {
      const b = c.req.valid("json");
      if (!(await tenantsTable.getTenant(c.var.db, b.tenant_id)))
        throw ApiError.notFound("tenant", b.tenant_id, "tenant_id");
      const now = Date.now();
      const id = newId("addon", now);
      const { addon } = await addonsTable.insertAddonWithVersion(
        c.var.db,
        {
          id,
          tenantId: b.tenant_id,
          kind: b.kind,
          name: b.name,
          family: b.family,
          visibility: b.visibility,
          latestVersion: 1,
          createdAt: now,
          updatedAt: now,
        },
        [
          {
            addonId: id,
            version: 1,
            status: b.status,
            storageKey: b.storage_key,
            sha256: b.sha256 ?? null,
            sizeBytes: b.size_bytes ?? null,
            createdAt: now,
            updatedAt: now,
          },
        ],
      );
      await audit(c, {
        tenantId: b.tenant_id,
        actor: "admin",
        action: "addon.register",
        target: id,
        details: { name: b.name, kind: b.kind, visibility: b.visibility },
      });
      return c.json(presentAddon(addon, b.tenant_id), 201);
    },
  )
  .openapi(
    createRoute({
      method: "get",
      path: "/audit",
      operationId: "adminListAudit",
      tags: ["admin"],
      summary: "The audit log of administrative actions",
      request: { query: z.object({ tenant_id: z.string().max(64).optional() }) },
      responses: {
        200: ok(z.object({ object: z.literal("list"), data: z.array(z.record(z.string(), z.unknown())) }), "Entries"),
        ...errorResponses(401, 403),
      },
    }),
    async (c) => {
      const rows = await auditTable.listAudit(c.var.db, c.req.valid("query").tenant_id);
      return c.json({ object: "list" as const, data: rows.map((r) => ({ ...r, createdAt: iso(r.createdAt) })) }, 200);
    },
  );
