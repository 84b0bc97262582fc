/**
 * The system of record (D1 / SQLite). Times are integer milliseconds since the epoch; JSON columns hold
 * documents that are read whole. Every index below serves a query on a hot path, named beside it.
 */
import {
  ADDON_KINDS,
  ADDON_VERSION_STATUSES,
  ENABLED_STATUSES,
  JOB_STATUSES,
  SCOPES,
  TENANT_STATUSES,
  USER_ROLES,
  VISIBILITIES,
  WEBHOOK_DELIVERY_STATUSES,
  WEBHOOK_EVENT_TYPES,
} from "@imagegen/contracts/enums";
import type { AddonDetails } from "@imagegen/contracts/addons";
import type { GenerationRequest, Provenance, Timings } from "@imagegen/contracts/generations";
import type { ModelSpec } from "@imagegen/contracts/models";
import { sql } from "drizzle-orm";
import { index, integer, primaryKey, real, sqliteTable, text, uniqueIndex } from "drizzle-orm/sqlite-core";

type Scope = (typeof SCOPES)[number];

export const tenants = sqliteTable("tenants", {
  id: text("id").primaryKey(),
  name: text("name").notNull(),
  status: text("status", { enum: TENANT_STATUSES }).notNull().default("active"),
  /** Per-tenant limits; null means the deployment default from env. */
  maxConcurrentJobs: integer("max_concurrent_jobs"),
  maxImagesPerDay: integer("max_images_per_day"),
  rateLimitPerMinute: integer("rate_limit_per_minute"),
  retentionDays: integer("retention_days"),
  maxApiKeys: integer("max_api_keys"),
  /**
   * Signs deliveries to a request's `webhook_url`; made on first use, rotatable. Sealed (AES-GCM under the
   * Worker's WEBHOOK_SECRET_KEY, see edge/src/webhooks/secrets.ts); rows from before sealing hold `whsec_…`.
   */
  webhookSecret: text("webhook_secret"),
  createdAt: integer("created_at").notNull(),
});

export const users = sqliteTable(
  "users",
  {
    id: text("id").primaryKey(),
    tenantId: text("tenant_id")
      .notNull()
      .references(() => tenants.id),
    /** Lower-cased; unique across tenants, since signing in names only the email. */
    email: text("email").notNull(),
    name: text("name").notNull().default(""),
    role: text("role", { enum: USER_ROLES }).notNull().default("member"),
    /** "pbkdf2-sha256$<iterations>$<salt b64>$<hash b64>" (edge/src/users/password.ts). */
    passwordHash: text("password_hash"),
    createdAt: integer("created_at").notNull(),
  },
  (t) => [
    uniqueIndex("users_email").on(t.email), // sign-in
    index("users_tenant").on(t.tenantId, t.createdAt), // user list, last-owner checks
  ],
);

/** Dashboard sessions: the cookie holds a random token, stored here hashed like API keys. */
export const sessions = sqliteTable(
  "sessions",
  {
    id: text("id").primaryKey(),
    /** SHA-256 of the cookie's token, hex. */
    tokenHash: text("token_hash").notNull(),
    userId: text("user_id")
      .notNull()
      .references(() => users.id),
    tenantId: text("tenant_id")
      .notNull()
      .references(() => tenants.id),
    /** Sent back as X-CSRF-Token on state changes; not a credential alone (the cookie is). */
    csrfToken: text("csrf_token").notNull(),
    createdAt: integer("created_at").notNull(),
    /** Sliding idle expiry counts from here (touched at most once a minute). */
    lastSeenAt: integer("last_seen_at").notNull(),
    /** Absolute expiry. */
    expiresAt: integer("expires_at").notNull(),
  },
  (t) => [
    uniqueIndex("sessions_token_hash").on(t.tokenHash), // every cookie-authenticated request
    index("sessions_user").on(t.userId), // sign-out everywhere, password change
  ],
);

export const invites = sqliteTable(
  "invites",
  {
    id: text("id").primaryKey(),
    tenantId: text("tenant_id")
      .notNull()
      .references(() => tenants.id),
    email: text("email").notNull(),
    role: text("role", { enum: USER_ROLES }).notNull().default("member"),
    /** SHA-256 of the invite token, hex: the token is in the link, shown once. */
    tokenHash: text("token_hash").notNull(),
    /** A user id, or "admin" for the operator's bootstrap invite. */
    createdBy: text("created_by").notNull(),
    createdAt: integer("created_at").notNull(),
    expiresAt: integer("expires_at").notNull(),
    usedAt: integer("used_at"),
  },
  (t) => [
    uniqueIndex("invites_token_hash").on(t.tokenHash), // sign-up
    index("invites_tenant").on(t.tenantId, t.createdAt), // invite list
  ],
);

/** Failed sign-ins, for lockout per email and per client address; old rows are pruned as new ones come. */
export const loginAttempts = sqliteTable(
  "login_attempts",
  {
    id: text("id").primaryKey(),
    email: text("email").notNull(),
    ip: text("ip").notNull(),
    createdAt: integer("created_at").notNull(),
  },
  (t) => [
    index("login_attempts_email").on(t.email, t.createdAt), // lockout by email
    index("login_attempts_ip").on(t.ip, t.createdAt), // lockout by address
  ],
);

export const apiKeys = sqliteTable(
  "api_keys",
  {
    id: text("id").primaryKey(),
    tenantId: text("tenant_id")
      .notNull()
      .references(() => tenants.id),
    userId: text("user_id").references(() => users.id),
    name: text("name").notNull(),
    /** The first characters of the key, kept for display ("igk_AbCd…"). */
    prefix: text("prefix").notNull(),
    /** SHA-256 of the whole key, hex. Keys are 256-bit random, so a fast hash is enough. */
    hash: text("hash").notNull(),
    scopes: text("scopes", { mode: "json" }).$type<Scope[]>().notNull(),
    createdAt: integer("created_at").notNull(),
    lastUsedAt: integer("last_used_at"),
    expiresAt: integer("expires_at"),
    revokedAt: integer("revoked_at"),
  },
  (t) => [
    uniqueIndex("api_keys_hash").on(t.hash), // every authenticated request
    index("api_keys_tenant").on(t.tenantId, t.createdAt), // key list
  ],
);

export const models = sqliteTable("models", {
  id: text("id").primaryKey(),
  family: text("family").notNull(),
  displayName: text("display_name").notNull(),
  /** Request limits and defaults derived from the bundle's manifest (see edge/src/models/from-manifest.ts). */
  spec: text("spec", { mode: "json" }).$type<ModelSpec>().notNull(),
  status: text("status", { enum: ENABLED_STATUSES }).notNull().default("active"),
  createdAt: integer("created_at").notNull(),
  updatedAt: integer("updated_at").notNull(),
});

export const addons = sqliteTable(
  "addons",
  {
    id: text("id").primaryKey(),
    tenantId: text("tenant_id")
      .notNull()
      .references(() => tenants.id),
    kind: text("kind", { enum: ADDON_KINDS }).notNull(),
    name: text("name").notNull(),
    family: text("family").notNull(),
    visibility: text("visibility", { enum: VISIBILITIES }).notNull().default("private"),
    latestVersion: integer("latest_version").notNull().default(0),
    createdAt: integer("created_at").notNull(),
    updatedAt: integer("updated_at").notNull(),
    deletedAt: integer("deleted_at"),
  },
  (t) => [
    uniqueIndex("addons_tenant_name").on(t.tenantId, t.name), // create / lookup by name
    index("addons_public").on(t.visibility, t.family), // public catalogue
  ],
);

export const addonVersions = sqliteTable(
  "addon_versions",
  {
    addonId: text("addon_id")
      .notNull()
      .references(() => addons.id),
    version: integer("version").notNull(),
    status: text("status", { enum: ADDON_VERSION_STATUSES }).notNull().default("pending"),
    rejectionReason: text("rejection_reason"),
    sizeBytes: integer("size_bytes"),
    sha256: text("sha256"),
    storageKey: text("storage_key").notNull(),
    /** What validation found (rank, targets, residual names...). */
    details: text("details", { mode: "json" }).$type<AddonDetails>(),
    createdAt: integer("created_at").notNull(),
    updatedAt: integer("updated_at").notNull(),
  },
  (t) => [primaryKey({ columns: [t.addonId, t.version] })],
);

export type JobStatus = (typeof JOB_STATUSES)[number];

export const jobs = sqliteTable(
  "jobs",
  {
    /** Time-sortable id: list order and cursors use it. */
    id: text("id").primaryKey(),
    tenantId: text("tenant_id")
      .notNull()
      .references(() => tenants.id),
    apiKeyId: text("api_key_id"),
    modelId: text("model_id").notNull(),
    status: text("status", { enum: JOB_STATUSES }).notNull().default("queued"),
    /** The normalised request (defaults applied, seed chosen, add-ons resolved to versions and hashes). */
    request: text("request", { mode: "json" }).$type<GenerationRequest>().notNull(),
    /** "addon_id@version" (contracts' refs.ts) of every add-on the job needs: lease affinity matches it against a runner's warm set. */
    addonRefs: text("addon_refs", { mode: "json" }).$type<string[]>().notNull(),
    imageCount: integer("image_count").notNull(),
    attempts: integer("attempts").notNull().default(0),
    maxAttempts: integer("max_attempts").notNull(),
    leaseId: text("lease_id"),
    leaseOwner: text("lease_owner"),
    /** Until the runner acknowledges the lease, lease_expires_at is the short ack deadline and no attempt is counted. */
    leaseExpiresAt: integer("lease_expires_at"),
    leaseAckedAt: integer("lease_acked_at"),
    progressStep: integer("progress_step"),
    progressTotal: integer("progress_total"),
    errorCode: text("error_code"),
    errorMessage: text("error_message"),
    /** queue_ms, addon_load_ms, inference_ms, upload_ms, total_ms ... */
    timings: text("timings", { mode: "json" }).$type<Timings>(),
    /** What produced the images: model and add-on hashes, sampler, steps, seed, runner. */
    provenance: text("provenance", { mode: "json" }).$type<Provenance>(),
    idempotencyKey: text("idempotency_key"),
    requestHash: text("request_hash"),
    webhookUrl: text("webhook_url"),
    createdAt: integer("created_at").notNull(),
    startedAt: integer("started_at"),
    finishedAt: integer("finished_at"),
  },
  (t) => [
    index("jobs_queue").on(t.status, t.tenantId, t.createdAt), // lease: queued heads per tenant
    index("jobs_lease_expiry").on(t.status, t.leaseExpiresAt), // requeue of expired leases
    index("jobs_tenant_list").on(t.tenantId, t.id), // list with cursor
    index("jobs_tenant_status").on(t.tenantId, t.status), // concurrency cap, list filter
    uniqueIndex("jobs_idempotency").on(t.tenantId, t.idempotencyKey), // Idempotency-Key
  ],
);

export const images = sqliteTable(
  "images",
  {
    id: text("id").primaryKey(),
    jobId: text("job_id")
      .notNull()
      .references(() => jobs.id),
    tenantId: text("tenant_id")
      .notNull()
      .references(() => tenants.id),
    index: integer("index").notNull(),
    storageKey: text("storage_key").notNull(),
    width: integer("width").notNull(),
    height: integer("height").notNull(),
    seed: integer("seed").notNull(),
    sha256: text("sha256").notNull(),
    sizeBytes: integer("size_bytes").notNull(),
    createdAt: integer("created_at").notNull(),
    deletedAt: integer("deleted_at"),
  },
  (t) => [
    uniqueIndex("images_job_index").on(t.jobId, t.index), // job's images; completing twice cannot add twice
    index("images_retention").on(t.tenantId, t.createdAt), // retention sweep
  ],
);

export const runners = sqliteTable("runners", {
  id: text("id").primaryKey(),
  name: text("name").notNull(),
  /** SHA-256 of the runner token: a secret of its own kind, never a tenant key. */
  tokenHash: text("token_hash").notNull().unique(),
  status: text("status", { enum: ENABLED_STATUSES }).notNull().default("active"),
  capacity: integer("capacity").notNull().default(1),
  warmAddons: text("warm_addons", { mode: "json" }).$type<string[]>().notNull().default(sql`'[]'`),
  models: text("models", { mode: "json" }).$type<string[]>().notNull().default(sql`'[]'`),
  lastSeenAt: integer("last_seen_at"),
  createdAt: integer("created_at").notNull(),
  /** Set when the operator revoked the runner: its token hash is replaced then, so no token authenticates it. */
  revokedAt: integer("revoked_at"),
});

export const webhookEndpoints = sqliteTable(
  "webhook_endpoints",
  {
    id: text("id").primaryKey(),
    tenantId: text("tenant_id")
      .notNull()
      .references(() => tenants.id),
    url: text("url").notNull(),
    /** The signing secrets (current, and the one a rotation replaced until it expires), sealed like tenants.webhookSecret. */
    secret: text("secret").notNull(),
    /** Event types (WEBHOOK_EVENT_TYPES) this endpoint receives. */
    events: text("events", { mode: "json" }).$type<(typeof WEBHOOK_EVENT_TYPES)[number][]>().notNull(),
    disabledAt: integer("disabled_at"),
    createdAt: integer("created_at").notNull(),
  },
  (t) => [index("webhook_endpoints_tenant").on(t.tenantId)],
);

export const webhookDeliveries = sqliteTable(
  "webhook_deliveries",
  {
    id: text("id").primaryKey(),
    tenantId: text("tenant_id")
      .notNull()
      .references(() => tenants.id),
    endpointId: text("endpoint_id"),
    url: text("url").notNull(),
    jobId: text("job_id"),
    event: text("event").notNull(),
    payload: text("payload", { mode: "json" }).$type<Record<string, unknown>>().notNull(),
    status: text("status", { enum: WEBHOOK_DELIVERY_STATUSES }).notNull().default("pending"),
    attempts: integer("attempts").notNull().default(0),
    nextAttemptAt: integer("next_attempt_at"),
    lastResponseStatus: integer("last_response_status"),
    lastError: text("last_error"),
    createdAt: integer("created_at").notNull(),
  },
  (t) => [
    index("webhook_deliveries_due").on(t.status, t.nextAttemptAt), // delivery sweep
    index("webhook_deliveries_tenant").on(t.tenantId, t.createdAt), // delivery list
  ],
);

export const usageCounters = sqliteTable(
  "usage_counters",
  {
    tenantId: text("tenant_id")
      .notNull()
      .references(() => tenants.id),
    /** UTC day, YYYY-MM-DD. */
    day: text("day").notNull(),
    jobs: integer("jobs").notNull().default(0),
    images: integer("images").notNull().default(0),
    inferenceMs: real("inference_ms").notNull().default(0),
  },
  (t) => [primaryKey({ columns: [t.tenantId, t.day] })], // daily image cap on every create
);

export const auditLog = sqliteTable(
  "audit_log",
  {
    id: text("id").primaryKey(),
    tenantId: text("tenant_id"),
    actor: text("actor").notNull(),
    action: text("action").notNull(),
    target: text("target"),
    details: text("details", { mode: "json" }).$type<Record<string, unknown>>(),
    createdAt: integer("created_at").notNull(),
  },
  (t) => [index("audit_log_tenant").on(t.tenantId, t.createdAt)],
);
