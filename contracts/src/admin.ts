/** The operator's API (`/admin/v1`): tenants, runners, add-ons registered from storage. */
import { z } from "@hono/zod-openapi";
import { AddonKind, AddonName, AddonVersionStatus, Sha256, Visibility } from "./addons.ts";
import { RUNNER_STATUSES, TENANT_STATUSES } from "./enums.ts";

export const TenantStatus = z.enum(TENANT_STATUSES);
export type TenantStatus = z.infer<typeof TenantStatus>;

export const Limits = z
  .object({
    max_concurrent_jobs: z.number().int().min(1).max(10_000).nullable().optional(),
    max_images_per_day: z.number().int().min(1).max(10_000_000).nullable().optional(),
    rate_limit_per_minute: z.number().int().min(1).max(1_000_000).nullable().optional(),
    retention_days: z.number().int().min(1).max(3650).nullable().optional(),
    /** Unrevoked, unexpired API keys a tenant may hold at once (keys it mints itself included). */
    max_api_keys: z.number().int().min(1).max(10_000).nullable().optional(),
  })
  .strict();

export const CreateTenantBody = z
  .object({ name: z.string().min(1).max(128), limits: Limits.optional() })
  .strict()
  .openapi("CreateTenant");

export const UpdateTenantBody = z
  .object({ name: z.string().min(1).max(128).optional(), status: TenantStatus.optional(), limits: Limits.optional() })
  .strict()
  .openapi("UpdateTenant");

export const Tenant = z
  .object({
    id: z.string(),
    object: z.literal("tenant"),
    name: z.string(),
    status: TenantStatus,
    limits: z.object({
      max_concurrent_jobs: z.number().int(),
      max_images_per_day: z.number().int(),
      rate_limit_per_minute: z.number().int(),
      retention_days: z.number().int(),
      max_api_keys: z.number().int(),
    }),
    created_at: z.string(),
  })
  .openapi("Tenant");

export const CreateRunnerBody = z
  .object({ name: z.string().min(1).max(128), capacity: z.number().int().min(1).max(64).default(1) })
  .strict()
  .openapi("CreateRunner");

export const RunnerStatus = z.enum(RUNNER_STATUSES);

export const Runner = z
  .object({
    id: z.string(),
    object: z.literal("runner"),
    name: z.string(),
    /** `disabled` runners are refused until enabled again; `revoked` is final (the token is gone). */
    status: RunnerStatus,
    /** The most jobs it may hold at once; a lease may declare fewer, never more. */
    capacity: z.number().int(),
    /** Leases it holds now (unexpired). */
    active_leases: z.number().int(),
    warm_addons: z.array(z.string()),
    models: z.array(z.string()),
    last_seen_at: z.string().nullable(),
    created_at: z.string(),
    revoked_at: z.string().nullable(),
  })
  .openapi("Runner");
/** Registration and rotation answer with the token, once: only its hash is stored. */
export const CreatedRunner = Runner.extend({ token: z.string() }).openapi("CreatedRunner");
export const RunnerList = z.object({ object: z.literal("list"), data: z.array(Runner) }).openapi("RunnerList");

/** Registers an add-on whose file is already in storage (demo add-ons, migrations); tenants upload instead. */
export const RegisterAddonBody = z
  .object({
    tenant_id: z.string().min(1),
    kind: AddonKind,
    name: AddonName,
    family: z.string().min(1).max(64),
    visibility: Visibility.default("private"),
    status: AddonVersionStatus.default("ready"),
    storage_key: z.string().min(1).max(512),
    sha256: Sha256.optional(),
    size_bytes: z.number().int().positive().optional(),
  })
  .strict()
  .openapi("RegisterAddon");
