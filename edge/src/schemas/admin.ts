import { z } from "@hono/zod-openapi";

export const SCOPES = ["generations:write", "generations:read", "addons:write", "addons:read", "keys:write"] as const;
export const Scope = z.enum(SCOPES);

export const Limits = z
  .object({
    max_concurrent_jobs: z.number().int().min(1).max(10_000).nullable().optional(),
    max_images_per_day: z.number().int().min(1).max(10_000_000).nullable().optional(),
    rate_limit_per_minute: z.number().int().min(1).max(1_000_000).nullable().optional(),
    retention_days: z.number().int().min(1).max(3650).nullable().optional(),
  })
  .strict();

export const CreateTenantBody = z
  .object({ name: z.string().min(1).max(128), limits: Limits.optional() })
  .strict()
  .openapi("CreateTenant");

export const UpdateTenantBody = z
  .object({ name: z.string().min(1).max(128).optional(), status: z.enum(["active", "suspended"]).optional(), limits: Limits.optional() })
  .strict()
  .openapi("UpdateTenant");

export const Tenant = z
  .object({
    id: z.string(),
    object: z.literal("tenant"),
    name: z.string(),
    status: z.enum(["active", "suspended"]),
    limits: z.object({
      max_concurrent_jobs: z.number().int(),
      max_images_per_day: z.number().int(),
      rate_limit_per_minute: z.number().int(),
      retention_days: z.number().int(),
    }),
    created_at: z.string(),
  })
  .openapi("Tenant");

export const CreateKeyBody = z
  .object({
    name: z.string().min(1).max(128).default("default"),
    scopes: z.array(Scope).min(1).default([...SCOPES]),
    expires_in_days: z.number().int().min(1).max(3650).optional(),
  })
  .strict()
  .openapi("CreateKey");

export const ApiKey = z
  .object({
    id: z.string(),
    object: z.literal("api_key"),
    tenant_id: z.string(),
    name: z.string(),
    prefix: z.string(),
    scopes: z.array(z.string()),
    created_at: z.string(),
    last_used_at: z.string().nullable(),
    expires_at: z.string().nullable(),
    revoked_at: z.string().nullable(),
  })
  .openapi("ApiKey");

/** Only the answer to a create carries the secret: it is stored hashed and never shown again. */
export const CreatedApiKey = ApiKey.extend({ secret: z.string() }).openapi("CreatedApiKey");
export const ApiKeyList = z.object({ object: z.literal("list"), data: z.array(ApiKey) }).openapi("ApiKeyList");

export const CreateRunnerBody = z
  .object({ name: z.string().min(1).max(128), capacity: z.number().int().min(1).max(64).default(1) })
  .strict()
  .openapi("CreateRunner");

export const Runner = z
  .object({
    id: z.string(),
    object: z.literal("runner"),
    name: z.string(),
    status: z.string(),
    capacity: z.number().int(),
    warm_addons: z.array(z.string()),
    models: z.array(z.string()),
    last_seen_at: z.string().nullable(),
  })
  .openapi("Runner");
export const CreatedRunner = Runner.extend({ token: z.string() }).openapi("CreatedRunner");

/** Registers an add-on whose file is already in storage (demo add-ons, migrations); tenants upload instead. */
export const RegisterAddonBody = z
  .object({
    tenant_id: z.string().min(1),
    kind: z.enum(["lora", "controlnet"]),
    name: z.string().min(1).max(128).regex(/^[A-Za-z0-9._-]+$/),
    family: z.string().min(1).max(64),
    visibility: z.enum(["private", "tenant", "public"]).default("private"),
    status: z.enum(["pending", "validating", "ready", "rejected"]).default("ready"),
    storage_key: z.string().min(1).max(512),
    sha256: z.string().regex(/^[0-9a-f]{64}$/).optional(),
    size_bytes: z.number().int().positive().optional(),
  })
  .strict()
  .openapi("RegisterAddon");

export const Addon = z
  .object({
    id: z.string(),
    object: z.literal("addon"),
    kind: z.enum(["lora", "controlnet"]),
    name: z.string(),
    family: z.string(),
    visibility: z.enum(["private", "tenant", "public"]),
    latest_version: z.number().int(),
    owned: z.boolean(),
    created_at: z.string(),
  })
  .openapi("Addon");

export const ADDON_SIZE_LIMITS = { lora: 64 * 1024 * 1024, controlnet: 512 * 1024 * 1024 } as const;

export const CreateAddonBody = z
  .object({
    kind: z.enum(["lora", "controlnet"]),
    /** A new name creates an add-on; an existing one of this tenant's adds a version (older versions stay usable as id@version). */
    name: z.string().min(1).max(128).regex(/^[A-Za-z0-9._-]+$/),
    family: z.string().min(1).max(64).openapi({ example: "tiny-shapes" }),
    visibility: z.enum(["private", "tenant", "public"]).default("private"),
    size_bytes: z.number().int().positive(),
    sha256: z.string().regex(/^[0-9a-f]{64}$/),
  })
  .strict()
  .openapi("CreateAddon");

export const AddonVersion = z
  .object({
    version: z.number().int(),
    status: z.enum(["pending", "validating", "ready", "rejected"]),
    rejection_reason: z.string().nullable(),
    size_bytes: z.number().int().nullable(),
    sha256: z.string().nullable(),
    details: z.record(z.string(), z.unknown()).nullable(),
    created_at: z.string(),
  })
  .openapi("AddonVersion");

export const AddonUpload = z
  .object({
    addon: Addon,
    version: AddonVersion,
    upload: z.object({ method: z.literal("PUT"), url: z.string(), headers: z.record(z.string(), z.string()), expires_at: z.string() }),
  })
  .openapi("AddonUpload");

export const UpdateAddonBody = z.object({ visibility: z.enum(["private", "tenant", "public"]) }).strict().openapi("UpdateAddon");
