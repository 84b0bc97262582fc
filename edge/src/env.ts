import type { Doorbell } from "./dispatch/doorbell.ts";
import type { RateLimiter } from "./limits/rate-limiter.ts";
import type { WebhookDeliverer } from "./webhooks/deliverer.ts";

/** The Worker's bindings, as wrangler.toml declares them. */
export interface Env {
  DB: D1Database;
  /** The dashboard's static files ([assets] in wrangler.toml; edge/src/dashboard/public). */
  ASSETS?: Fetcher;
  /** The R2 bucket behind S3_ENDPOINT, for the edge's own reads; absent with a non-R2 store. */
  BUCKET?: R2Bucket;
  S3_ENDPOINT?: string;
  S3_REGION?: string;
  S3_BUCKET?: string;
  S3_ACCESS_KEY_ID?: string;
  S3_SECRET_ACCESS_KEY?: string;
  DOORBELL: DurableObjectNamespace<Doorbell>;
  RATE_LIMITER: DurableObjectNamespace<RateLimiter>;
  WEBHOOK_DELIVERER: DurableObjectNamespace<WebhookDeliverer>;
  ADMIN_TOKEN?: string;
  /** Seals webhook signing secrets at rest: base64 of 32 bytes (a Worker secret). */
  WEBHOOK_SECRET_KEY?: string;
  /** "true" lets webhooks reach private, loopback and link-local hosts (the local stack); off in production. */
  ALLOW_PRIVATE_WEBHOOKS?: string;
  /** Waits before each retry of a failed delivery, ms, comma-separated; one more attempt than entries. */
  WEBHOOK_RETRY_BACKOFF_MS?: string;
  DEFAULT_RATE_LIMIT_PER_MINUTE: string;
  DEFAULT_MAX_CONCURRENT_JOBS: string;
  DEFAULT_MAX_IMAGES_PER_DAY: string;
  DEFAULT_MAX_API_KEYS?: string;
  LEASE_TTL_MS: string;
  LEASE_ACK_TIMEOUT_MS?: string;
  MAX_JOB_ATTEMPTS: string;
  AFFINITY_MAX_WAIT_MS: string;
  DEFAULT_MODEL: string;
  /** "true": one JSON line of server timing per request in the log (the latency bench reads them). */
  TIMING_LOG?: string;
}

/** The edge's settings, read once per request from env (one config loader). */
export interface Settings {
  defaultRateLimitPerMinute: number;
  defaultMaxConcurrentJobs: number;
  defaultMaxImagesPerDay: number;
  defaultMaxApiKeys: number;
  leaseTtlMs: number;
  /** How long a leased job waits for its runner's acknowledgement before it goes back to the queue (no attempt spent). */
  leaseAckTimeoutMs: number;
  maxJobAttempts: number;
  affinityMaxWaitMs: number;
  defaultModel: string;
  allowPrivateWebhooks: boolean;
  webhookRetryBackoffMs: number[];
}

/** 5 s, 30 s, 2 min, 10 min, 1 h: six attempts over about 73 minutes, then the delivery is failed. */
const WEBHOOK_RETRY_BACKOFF_MS = [5_000, 30_000, 120_000, 600_000, 3_600_000];

function intListVar(raw: string | undefined, fallback: number[]): number[] {
  const values = raw?.split(",").map((v) => Number.parseInt(v.trim(), 10));
  return values?.length && values.every((v) => Number.isFinite(v) && v >= 0) ? values : fallback;
}

function intVar(env: Env, name: keyof Env, fallback: number): number {
  const raw = env[name];
  const value = typeof raw === "string" ? Number.parseInt(raw, 10) : Number.NaN;
  return Number.isFinite(value) && value > 0 ? value : fallback;
}

export function loadSettings(env: Env): Settings {
  const leaseTtlMs = intVar(env, "LEASE_TTL_MS", 30_000);
  return {
    defaultRateLimitPerMinute: intVar(env, "DEFAULT_RATE_LIMIT_PER_MINUTE", 600),
    defaultMaxConcurrentJobs: intVar(env, "DEFAULT_MAX_CONCURRENT_JOBS", 16),
    defaultMaxImagesPerDay: intVar(env, "DEFAULT_MAX_IMAGES_PER_DAY", 5000),
    defaultMaxApiKeys: intVar(env, "DEFAULT_MAX_API_KEYS", 20),
    leaseTtlMs,
    leaseAckTimeoutMs: intVar(env, "LEASE_ACK_TIMEOUT_MS", Math.min(10_000, leaseTtlMs)),
    maxJobAttempts: intVar(env, "MAX_JOB_ATTEMPTS", 3),
    affinityMaxWaitMs: intVar(env, "AFFINITY_MAX_WAIT_MS", 2_000),
    defaultModel: env.DEFAULT_MODEL || "tiny-shapes",
    allowPrivateWebhooks: env.ALLOW_PRIVATE_WEBHOOKS === "true",
    webhookRetryBackoffMs: intListVar(env.WEBHOOK_RETRY_BACKOFF_MS, WEBHOOK_RETRY_BACKOFF_MS),
  };
}
