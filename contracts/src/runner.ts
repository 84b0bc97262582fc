/** The runner API (`/internal/v1`): lease, heartbeat, complete, fail. Runners authenticate with a runner token. */
import { z } from "@hono/zod-openapi";
import { AddonKind, Sha256 } from "./addons.ts";
import { GenerationRequest, JobStatus } from "./generations.ts";

export const LeaseBody = z
  .object({
    models: z.array(z.string().min(1).max(64)).min(1).max(32),
    /** "addon_id@version" (refs.ts) of every add-on this runner holds parsed and ready. */
    warm_addons: z.array(z.string().max(128)).max(1000).default([]),
    capacity: z.number().int().min(1).max(64).default(1),
    /**
     * Lease up to this many jobs in one call (one D1 round trip, one answer): the answer is then `LeasedJobs`, with
     * at least one job, fewer when the queue or the runner's capacity holds fewer. Each job is leased exactly as by a
     * call of its own (the same order, fairness and capacity checks, one after the other). Without it, one job and
     * the answer is a `LeasedJob`.
     */
    max_jobs: z.number().int().min(1).max(64).optional(),
    /** How long to wait for a job before answering 204 (long poll). */
    wait_ms: z.number().int().min(0).max(60_000).default(25_000),
    /**
     * Acknowledge the lease in the lease itself (one round trip less before the work starts): the attempt counts at
     * once and the lease runs its full TTL, so no first heartbeat is needed. The cost: a job whose answer is lost on
     * the way (the runner hangs up first, it gets no job) waits out the full TTL, not the short acknowledgement
     * deadline, before it goes back to the queue. Default false (the acknowledging heartbeat).
     */
    acknowledge: z.boolean().optional(),
  })
  .strict()
  .openapi("LeaseRequest");

export const LeasedJob = z
  .object({
    lease_id: z.string(),
    /**
     * The acknowledgement deadline: the lease is provisional until the runner's first heartbeat, which counts the
     * attempt and extends the lease to its full TTL. Unacknowledged, the job goes back to the queue at no cost.
     */
    lease_expires_at: z.string(),
    job: z.object({
      id: z.string(),
      tenant_id: z.string(),
      /** The attempt this lease becomes once acknowledged. */
      attempt: z.number().int(),
      queued_ms: z.number().int(),
      request: GenerationRequest,
    }),
    /**
     * Where each image goes: keys of this lease alone, so a runner whose lease ended cannot overwrite another's
     * images. The upload URLs come from `outputs` once the image and its checksum exist.
     */
    outputs: z.array(
      z.object({ index: z.number().int(), storage_key: z.string(), content_type: z.literal("image/png") }),
    ),
    /** True when the lease was acknowledged as it was made (`acknowledge` in the request): no heartbeat confirms it. */
    acknowledged: z.boolean().optional(),
    /** How long each heartbeat extends the lease (as `HeartbeatResult.lease_ttl_ms`), for a lease acknowledged at once. */
    lease_ttl_ms: z.number().int().positive().optional(),
    /** Presigned GETs for the job's add-ons, with the hashes the runner must verify. */
    addons: z.array(
      z.object({
        id: z.string(),
        version: z.number().int(),
        ref: z.string(),
        kind: AddonKind,
        sha256: z.string().nullable(),
        size_bytes: z.number().int().nullable(),
        get_url: z.string(),
      }),
    ),
  })
  .openapi("LeasedJob");

/** The answer to a lease with `max_jobs`: each job with its own lease, as a `LeasedJob` alone would carry it. */
export const LeasedJobs = z.object({ jobs: z.array(LeasedJob).min(1).max(64) }).openapi("LeasedJobs");

export const Progress = z.object({ step: z.number().int().min(0), total: z.number().int().min(1) }).strict();

export const HeartbeatBody = z
  .object({
    lease_id: z.string().min(1).max(64),
    progress: Progress.optional(),
    warm_addons: z.array(z.string().max(128)).max(1000).optional(),
  })
  .strict()
  .openapi("Heartbeat");

export const HeartbeatResult = z
  .object({
    cancel: z.boolean(),
    lease_expires_at: z.string().nullable(),
    /** How long each heartbeat extends the lease: runners beat a few times per TTL (a third) rather than guess it. */
    lease_ttl_ms: z.number().int().positive().optional(),
  })
  .openapi("HeartbeatResult");

export const OutputUploadBody = z
  .object({
    lease_id: z.string().min(1).max(64),
    images: z
      .array(
        z
          .object({ index: z.number().int().min(0).max(63), sha256: Sha256, size_bytes: z.number().int().positive() })
          .strict(),
      )
      .min(1)
      .max(64),
  })
  .strict()
  .openapi("OutputUploadRequest");

/**
 * Presigned PUTs that carry the declared size and SHA-256 (`x-amz-checksum-sha256`) in their signature, so the
 * store refuses any other bytes; they expire with the lease.
 */
export const OutputUploads = z
  .object({
    uploads: z.array(
      z.object({
        index: z.number().int(),
        storage_key: z.string(),
        put_url: z.string(),
        /** Send exactly these headers with the PUT: they are signed. */
        headers: z.record(z.string(), z.string()),
        expires_at: z.string(),
      }),
    ),
  })
  .openapi("OutputUploads");

export const CompletedImage = z
  .object({
    index: z.number().int().min(0).max(63),
    storage_key: z.string().min(1).max(512),
    width: z.number().int().positive(),
    height: z.number().int().positive(),
    seed: z.number().int().min(0),
    sha256: Sha256,
    size_bytes: z.number().int().positive(),
  })
  .strict();

export const CompleteBody = z
  .object({
    lease_id: z.string().min(1).max(64),
    images: z.array(CompletedImage).min(1).max(64),
    timings: z.record(z.string().max(64), z.number().min(0)).default({}),
    provenance: z.record(z.string().max(64), z.unknown()).default({}),
  })
  .strict()
  .openapi("Complete");

/**
 * The failure code of a runner that could not store a job's images (storage errors, hangs or lies past the upload
 * URLs' deadline). The store failed, not the job or the runner: with `retryable`, the edge requeues the job without
 * counting the attempt (an outage must not use up a job's attempts), and the runner stops leasing until storage
 * answers again.
 */
export const STORAGE_UNAVAILABLE = "storage_unavailable";

export const FailBody = z
  .object({
    lease_id: z.string().min(1).max(64),
    error: z.object({ code: z.string().min(1).max(64), message: z.string().min(1).max(2000) }).strict(),
    retryable: z.boolean().default(false),
  })
  .strict()
  .openapi("Fail");

/**
 * What `complete` and `fail` answer: the job's state after the call (`queued` when a retryable failure was
 * requeued). Not the public job: a runner has no use for signed image URLs, and signing them costs the edge.
 */
export const RunnerAck = z.object({ ok: z.literal(true), status: JobStatus }).openapi("RunnerAck");
export type RunnerAck = z.infer<typeof RunnerAck>;
