/**
 * Every closed set of names the wire and the database share, declared once. Plain tuples with no imports, so that
 * `db` (drizzle's `text(..., { enum })`) and the zod schemas can both start from them; the zod modules export the
 * schema and its type under the singular name (`JobStatus`, `AddonKind`, …).
 */

/** `queued → running → succeeded | failed | canceled`. */
export const JOB_STATUSES = ["queued", "running", "succeeded", "failed", "canceled"] as const;
/** The states that still hold a tenant's concurrency slot. */
export const ACTIVE_JOB_STATUSES = ["queued", "running"] as const satisfies readonly (typeof JOB_STATUSES)[number][];
/** The states a job never leaves. */
export const TERMINAL_JOB_STATUSES = [
  "succeeded",
  "failed",
  "canceled",
] as const satisfies readonly (typeof JOB_STATUSES)[number][];

export const ADDON_KINDS = ["lora", "controlnet"] as const;

/** private: the owner's keys only; tenant: the owner's tenant; public: every tenant. */
export const VISIBILITIES = ["private", "tenant", "public"] as const;

/** An uploaded add-on version is usable only once validation made it `ready`. */
export const ADDON_VERSION_STATUSES = ["pending", "validating", "ready", "rejected"] as const;

/**
 * Samplers a request may name. The bundle manifest (`@imagegen/formats`) lists the same names for what a model was
 * trained for; formats depends on nothing of ours, so the edge's tests check that the two lists agree.
 */
export const SAMPLER_NAMES = [
  "ddim",
  "lcm",
  "rectified-flow",
  "euler",
  "euler-a",
  "dpm++2m",
  "dpm++2m-karras",
] as const;

/** How DeepCache spaces its full U-Net passes. */
export const CACHE_SCHEDULES = ["uniform", "non-uniform"] as const;

/** LoRA target layer kinds a model spec names (the same list as the manifest's in `@imagegen/formats`). */
export const LORA_TARGET_KINDS = ["linear", "conv1x1", "conv3x3"] as const;

export const TENANT_STATUSES = ["active", "suspended"] as const;

/** Models and runners are both switched on and off by an operator. */
export const ENABLED_STATUSES = ["active", "disabled"] as const;
/** A runner as the operator sees it: its stored status, or `revoked` once its token was revoked (final). */
export const RUNNER_STATUSES = [...ENABLED_STATUSES, "revoked"] as const;

/** member: uses; admin: + keys, add-on writes, webhooks; owner: + users and invites. */
export const USER_ROLES = ["owner", "admin", "member"] as const;

export const SCOPES = ["generations:write", "generations:read", "addons:write", "addons:read", "keys:write"] as const;

export const WEBHOOK_DELIVERY_STATUSES = ["pending", "delivered", "failed"] as const;

/** What a webhook announces: `generation.<terminal status>`. */
export const WEBHOOK_EVENT_TYPES = ["generation.succeeded", "generation.failed", "generation.canceled"] as const;

/** Every failure code, and whether a job that failed with it goes back to the queue. */
export const FAILURE_CODES = {
  /** A model bundle or a ControlNet bundle that does not load or lies about its tensors. */
  bundle_invalid: false,
  /** The lease named a model this runner has no bundle for. */
  model_not_served: false,
  /** The execution providers asked for cannot run on this machine. */
  execution_provider_unavailable: false,
  /** The sampler does not fit the model (not listed in its manifest, or the wrong prediction type). */
  sampler_mismatch: false,
  /** The request does not validate. */
  request_invalid: false,
  /** The request cannot be generated on this model (size, batch, U-Net inputs). */
  generation_failed: false,
  lora_invalid: false,
  control_image_invalid: false,
  /** An add-on file whose bytes are not the ones its sha256 names. */
  addon_integrity: false,
  /** An add-on file that is not what its kind needs (a ControlNet archive without a bundle). */
  addon_invalid: false,
  /** Anything unforeseen (network, storage, a worker that died): another attempt may well succeed. */
  runner_error: true,
  /** The runner shut down mid-job and hands it back. */
  runner_shutdown: true,
  /** Storage failed the uploads (`STORAGE_UNAVAILABLE` in contracts): requeued, no attempt counted. */
  storage_unavailable: true,
} as const satisfies Record<string, boolean>;

export type FailureCode = keyof typeof FAILURE_CODES;

/**
 * Runner failure codes (FAILURE_CODES above) caused by what the tenant sent: the same request
 * fails the same way again, so the synchronous OpenAI-compatible face answers them 400, not 500.
 */
export const INPUT_FAILURE_CODES = [
  "request_invalid",
  "generation_failed",
  "sampler_mismatch",
  "lora_invalid",
  "control_image_invalid",
  "addon_invalid",
] as const satisfies readonly FailureCode[];

/** The `type` of the one error body; the HTTP status goes with it. */
export const ERROR_TYPES = [
  "invalid_request_error",
  "authentication_error",
  "permission_error",
  "not_found_error",
  "conflict_error",
  "idempotency_error",
  "rate_limit_error",
  "quota_exceeded_error",
  "api_error",
] as const;
