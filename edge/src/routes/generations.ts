import { createRoute, z } from "@hono/zod-openapi";
import { addonsTable, jobsTable, modelsTable, type Db } from "@imagegen/db";
import { requireScope } from "../auth/middleware.ts";
import { router, type AppEnv } from "../context.ts";
import { doorbell, jobTopic, QUEUE_TOPIC } from "../dispatch/doorbell.ts";
import { ApiError } from "../errors.ts";
import { canonicalJson, sha256Hex } from "../lib/crypto.ts";
import { newId } from "../lib/ids.ts";
import { errorResponses, IdParam, iso } from "../schemas/common.ts";
import {
  CreateGenerationBody,
  Generation,
  GenerationList,
  ListGenerationsQuery,
  MAX_SEED,
  SignedImageUrl,
  SignImageBody,
  type GenerationRequest,
} from "../schemas/generations.ts";
import { ModelSpec } from "../schemas/models.ts";
import type { Context } from "hono";
import type { Env } from "../env.ts";
import { objectStore, storageConfigured } from "../storage/index.ts";
import { generationEnded } from "../webhooks/index.ts";

export type SignedUrls = Map<string, { url: string; expiresAt: number }>;

export function presentJob(job: jobsTable.Job, images: jobsTable.Image[], urls: SignedUrls = new Map()): Generation {
  return {
    id: job.id,
    object: "generation",
    status: job.status,
    request: job.request as GenerationRequest,
    progress: job.progressTotal != null ? { step: job.progressStep ?? 0, total: job.progressTotal } : null,
    images: images
      .filter((img) => img.jobId === job.id && img.deletedAt === null)
      .map((img) => ({
        index: img.index,
        width: img.width,
        height: img.height,
        seed: img.seed,
        sha256: img.sha256,
        size_bytes: img.sizeBytes,
        url: urls.get(img.id)?.url ?? null,
        url_expires_at: iso(urls.get(img.id)?.expiresAt),
      })),
    error: job.errorCode && job.status !== "succeeded" ? { code: job.errorCode, message: job.errorMessage ?? "" } : null,
    attempts: job.attempts,
    timings: job.timings ?? null,
    provenance: job.provenance ?? null,
    created_at: iso(job.createdAt)!,
    started_at: iso(job.startedAt),
    finished_at: iso(job.finishedAt),
  };
}

/** Signs a GET URL for each image with its job's output TTL (none when storage is not configured). */
async function signImages(env: Env, jobs: jobsTable.Job[], images: jobsTable.Image[]): Promise<SignedUrls> {
  const urls: SignedUrls = new Map();
  if (!storageConfigured(env) || images.length === 0) return urls;
  const store = objectStore(env);
  const ttlOf = new Map(jobs.map((j) => [j.id, (j.request as GenerationRequest).output_ttl_seconds]));
  const now = Date.now();
  await Promise.all(
    images.map(async (img) => {
      const ttl = ttlOf.get(img.jobId) ?? 3600;
      urls.set(img.id, { url: await store.presignGet(img.storageKey, ttl), expiresAt: now + ttl * 1000 });
    }),
  );
  return urls;
}

export async function presentJobs(env: Env, db: Db, jobs: jobsTable.Job[]): Promise<Generation[]> {
  const images = await jobsTable.jobImages(db, jobs.filter((j) => j.status === "succeeded").map((j) => j.id));
  const urls = await signImages(env, jobs, images);
  return jobs.map((j) => presentJob(j, images, urls));
}

export async function loadPresentedJob(env: Env, db: Db, job: jobsTable.Job): Promise<Generation> {
  return (await presentJobs(env, db, [job]))[0]!;
}

const TERMINAL = new Set(jobsTable.TERMINAL);
const MAX_WAIT_SECONDS = 60;

/** `Prefer: wait=N` (RFC 7240): hold the answer until the job ends or N seconds pass. */
function preferWait(header: string | undefined): number | undefined {
  const m = header?.match(/(?:^|[,;\s])wait\s*=\s*(\d+)/i);
  return m ? Math.min(Number(m[1]), MAX_WAIT_SECONDS) : undefined;
}

/** Waits on the job's doorbell (rung at every state change) instead of polling D1. */
export async function waitForJob(c: Context<AppEnv>, tenantId: string, id: string, seconds: number): Promise<jobsTable.Job | undefined> {
  const bell = doorbell(c.env, jobTopic(id));
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const seq = await bell.current();
    const job = await jobsTable.getJob(c.var.db, tenantId, id);
    const left = deadline - Date.now();
    if (!job || TERMINAL.has(job.status) || left <= 0) return job;
    await bell.wait(seq, left);
  }
}

function parseRef(ref: string): { id: string; version?: number } {
  const [id, version] = ref.split("@");
  return version ? { id: id!, version: Number(version) } : { id: id! };
}

/** Applies the model's limits and defaults, resolves add-ons, and picks a seed: the request as the job runs it. */
async function normalise(db: Db, tenantId: string, body: CreateGenerationBody, modelId: string): Promise<{ request: GenerationRequest; addonRefs: string[] }> {
  const model = await modelsTable.getModel(db, modelId);
  if (!model || model.status !== "active") throw ApiError.notFound("model", modelId, "model");
  const spec = ModelSpec.parse(model.spec);
  const width = body.width ?? spec.default_width;
  const height = body.height ?? spec.default_height;
  for (const [param, v] of [["width", width], ["height", height]] as const) {
    if (v < spec.min_size || v > spec.max_size || v % spec.multiple_of !== 0) {
      throw ApiError.invalid("invalid_size", `${param} must be between ${spec.min_size} and ${spec.max_size} and a multiple of ${spec.multiple_of} for model '${model.id}'; got ${v}.`, param);
    }
  }
  if (body.n > spec.max_images) throw ApiError.invalid("invalid_parameter", `n must be at most ${spec.max_images} for model '${model.id}'.`, "n");
  const sampler = body.sampler ?? spec.default_sampler;
  const limits = spec.samplers[sampler];
  if (!limits) {
    const names = Object.keys(spec.samplers).join(", ");
    throw ApiError.invalid("unsupported_sampler", `Model '${model.id}' does not support sampler '${sampler}'; it supports: ${names}.`, "sampler");
  }
  const steps = body.steps ?? limits.default_steps;
  if (steps < limits.min_steps || steps > limits.max_steps) {
    throw ApiError.invalid("invalid_steps", `steps must be between ${limits.min_steps} and ${limits.max_steps} for sampler '${sampler}'.`, "steps");
  }
  const guidance = body.guidance ?? limits.default_guidance;
  if (guidance > limits.max_guidance) {
    throw ApiError.invalid("invalid_guidance", `guidance must be at most ${limits.max_guidance} for sampler '${sampler}'.`, "guidance");
  }
  const cache = body.cache ?? { mode: "off" as const };
  if (cache.mode === "deepcache" && !spec.supports_deepcache) {
    throw ApiError.invalid("unsupported_cache", `Model '${model.id}' does not support block caching.`, "cache");
  }
  if (body.loras.length && !spec.supports_lora) throw ApiError.invalid("unsupported_addon", `Model '${model.id}' does not take LoRAs.`, "loras");
  if (body.controlnets.length && !spec.supports_controlnet) {
    throw ApiError.invalid("unsupported_addon", `Model '${model.id}' does not take ControlNets.`, "controlnets");
  }

  const resolve = async (ref: string, kind: "lora" | "controlnet", param: string) => {
    const { id, version } = parseRef(ref);
    const found = await addonsTable.resolveVisibleVersion(db, tenantId, id, version);
    if (!found) {
      // Also what a foreign private add-on looks like: its existence is not revealed.
      throw new ApiError(404, "not_found_error", "addon_not_found", `No ready add-on '${ref}' is visible to this tenant.`, param);
    }
    if (found.addon.kind !== kind) throw ApiError.invalid("addon_kind_mismatch", `Add-on '${ref}' is a ${found.addon.kind}, not a ${kind}.`, param);
    if (found.version.status !== "ready") {
      throw ApiError.invalid("addon_not_ready", `Add-on '${ref}' version ${found.version.version} is ${found.version.status}${found.version.rejectionReason ? `: ${found.version.rejectionReason}` : ""}.`, param);
    }
    if (found.addon.family !== model.family) {
      throw ApiError.invalid("addon_family_mismatch", `Add-on '${ref}' is for model family '${found.addon.family}', not '${model.family}'.`, param);
    }
    return { id: found.addon.id, version: found.version.version, name: found.addon.name, sha256: found.version.sha256 };
  };
  const loras = await Promise.all(body.loras.map(async (l, i) => ({ ...(await resolve(l.id, "lora", `loras[${i}].id`)), scale: l.scale })));
  const controlnets = await Promise.all(
    body.controlnets.map(async (cn, i) => ({ ...(await resolve(cn.id, "controlnet", `controlnets[${i}].id`)), scale: cn.scale, image: cn.image })),
  );
  const seed = body.seed ?? crypto.getRandomValues(new Uint32Array(1))[0]! % (MAX_SEED + 1);
  const request: GenerationRequest = {
    model: model.id,
    prompt: body.prompt,
    negative_prompt: body.negative_prompt ?? "",
    width,
    height,
    n: body.n,
    seed,
    sampler,
    steps,
    guidance,
    loras,
    controlnets,
    cache,
    output_ttl_seconds: body.output_ttl_seconds,
    metadata: body.metadata ?? {},
  };
  const addonRefs = [...loras, ...controlnets].map((a) => `${a.id}@${a.version}`);
  return { request, addonRefs };
}

function secondsToUtcMidnight(now: number): number {
  const d = new Date(now);
  return Math.ceil((Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate() + 1) - now) / 1000);
}

/**
 * Validates, normalises and queues a generation for the authenticated tenant (or finds the job an earlier request
 * with the same Idempotency-Key created), within the tenant's caps, and rings the queue's doorbell. Shared by
 * `/v1/generations` and the OpenAI-compatible `/v1/images/generations`.
 */
export async function submitGeneration(
  c: Context<AppEnv>,
  body: CreateGenerationBody,
  idempotencyKey: string | undefined,
): Promise<{ job: jobsTable.Job; replayed: boolean }> {
  requireScope(c, "generations:write");
  const { tenant, key } = c.var.auth;
  const { db, settings } = c.var;
  const requestHash = await sha256Hex(canonicalJson(body));
  const replay = (existing: jobsTable.Job) => {
    if (existing.requestHash !== requestHash) {
      throw new ApiError(422, "idempotency_error", "idempotency_key_reused", "This Idempotency-Key was used with a different request body.");
    }
    return { job: existing, replayed: true };
  };
  if (idempotencyKey) {
    const existing = await jobsTable.findByIdempotencyKey(db, tenant.id, idempotencyKey);
    if (existing) return replay(existing);
  }
  const { request, addonRefs } = await normalise(db, tenant.id, body, body.model ?? settings.defaultModel);
  const now = Date.now();
  let outcome: jobsTable.InsertOutcome;
  try {
    outcome = await jobsTable.insertJobWithinCaps(
      db,
      {
        id: newId("gen", now),
        tenantId: tenant.id,
        apiKeyId: key.id,
        modelId: request.model,
        request,
        addonRefs,
        imageCount: request.n,
        maxAttempts: settings.maxJobAttempts,
        idempotencyKey: idempotencyKey ?? null,
        requestHash,
        webhookUrl: body.webhook_url ?? null,
        createdAt: now,
      },
      {
        maxConcurrentJobs: tenant.maxConcurrentJobs ?? settings.defaultMaxConcurrentJobs,
        maxImagesPerDay: tenant.maxImagesPerDay ?? settings.defaultMaxImagesPerDay,
      },
    );
  } catch (err) {
    // Two requests with one Idempotency-Key raced: the loser answers with the winner's job.
    const existing = idempotencyKey && /UNIQUE/i.test(String(err)) ? await jobsTable.findByIdempotencyKey(db, tenant.id, idempotencyKey) : undefined;
    if (existing) return replay(existing);
    throw err;
  }
  if (!outcome.ok) {
    if (outcome.reason === "concurrency") {
      throw new ApiError(429, "quota_exceeded_error", "concurrency_limit_exceeded",
        `This tenant already has ${tenant.maxConcurrentJobs ?? settings.defaultMaxConcurrentJobs} jobs queued or running; wait for one to finish.`,
        undefined, { "Retry-After": "1" });
    }
    throw new ApiError(429, "quota_exceeded_error", "daily_image_quota_exceeded",
      `This request would exceed the tenant's ${tenant.maxImagesPerDay ?? settings.defaultMaxImagesPerDay} images per day.`,
      undefined, { "Retry-After": String(secondsToUtcMidnight(now)) });
  }
  await doorbell(c.env, QUEUE_TOPIC).ring();
  return { job: outcome.job, replayed: false };
}

const create = createRoute({
  method: "post",
  path: "/generations",
  tags: ["generations"],
  summary: "Create a generation",
  description:
    "Queues a generation. `Idempotency-Key` makes retries safe; `Prefer: wait=N` (N ≤ 60) answers when the job ends or after N seconds.",
  request: {
    headers: z.object({
      "idempotency-key": z.string().min(1).max(255).optional(),
      prefer: z.string().max(256).optional(),
    }),
    body: { content: { "application/json": { schema: CreateGenerationBody } }, required: true },
  },
  responses: {
    200: { description: "The job ended within the wait, or an idempotent replay", content: { "application/json": { schema: Generation } } },
    202: { description: "Queued (or still running after the wait)", content: { "application/json": { schema: Generation } } },
    ...errorResponses(400, 401, 403, 404, 413, 415, 422, 429),
  },
});

const get = createRoute({
  method: "get",
  path: "/generations/{id}",
  tags: ["generations"],
  summary: "Get a generation",
  request: { params: IdParam("generation id", "gen_01hzy3k8m2q9w7e4r5t6y7u8i9") },
  responses: { 200: { description: "The generation", content: { "application/json": { schema: Generation } } }, ...errorResponses(401, 404, 429) },
});

const list = createRoute({
  method: "get",
  path: "/generations",
  tags: ["generations"],
  summary: "List generations, newest first",
  request: { query: ListGenerationsQuery },
  responses: { 200: { description: "A page of generations", content: { "application/json": { schema: GenerationList } } }, ...errorResponses(400, 401, 429) },
});

const cancel = createRoute({
  method: "post",
  path: "/generations/{id}/cancel",
  tags: ["generations"],
  summary: "Cancel a queued or running generation",
  request: { params: IdParam("generation id", "gen_01hzy3k8m2q9w7e4r5t6y7u8i9") },
  responses: {
    200: { description: "The canceled generation", content: { "application/json": { schema: Generation } } },
    ...errorResponses(401, 404, 409, 429),
  },
});

const sign = createRoute({
  method: "post",
  path: "/generations/{id}/images/{index}/url",
  tags: ["generations"],
  summary: "Sign a new GET URL for an image, with its own lifetime",
  request: {
    params: z.object({
      id: z.string().min(1).max(64).openapi({ param: { name: "id", in: "path" } }),
      index: z.coerce.number().int().min(0).max(63).openapi({ param: { name: "index", in: "path" } }),
    }),
    body: { content: { "application/json": { schema: SignImageBody } }, required: false },
  },
  responses: { 200: { description: "A signed URL", content: { "application/json": { schema: SignedImageUrl } } }, ...errorResponses(400, 401, 404, 429) },
});

const events = createRoute({
  method: "get",
  path: "/generations/{id}/events",
  tags: ["generations"],
  summary: "Follow a generation as server-sent events",
  description:
    "Sends `generation` events (the whole generation object) whenever its status or progress changes, and closes after the final state. A comment line every 15 s keeps idle connections open.",
  request: { params: IdParam("generation id", "gen_01hzy3k8m2q9w7e4r5t6y7u8i9") },
  responses: { 200: { description: "An event stream", content: { "text/event-stream": { schema: z.string() } } }, ...errorResponses(401, 404, 429) },
});

const KEEPALIVE_MS = 15_000;

export const generations = router()
  .openapi(create, async (c) => {
    const headers = c.req.valid("header");
    const { job, replayed } = await submitGeneration(c, c.req.valid("json"), headers["idempotency-key"]);
    if (replayed) {
      c.header("Idempotent-Replayed", "true");
      return c.json(await loadPresentedJob(c.env, c.var.db, job), 200);
    }
    let current = job;
    const wait = preferWait(headers.prefer);
    if (wait !== undefined) {
      c.header("Preference-Applied", `wait=${wait}`);
      current = (await waitForJob(c, c.var.auth.tenant.id, job.id, wait)) ?? job;
    }
    c.header("Location", `/v1/generations/${current.id}`);
    return c.json(await loadPresentedJob(c.env, c.var.db, current), TERMINAL.has(current.status) ? 200 : 202);
  })
  .openapi(get, async (c) => {
    requireScope(c, "generations:read");
    const { id } = c.req.valid("param");
    const job = await jobsTable.getJob(c.var.db, c.var.auth.tenant.id, id);
    if (!job) throw ApiError.notFound("generation", id, "id");
    return c.json(await loadPresentedJob(c.env, c.var.db, job), 200);
  })
  .openapi(list, async (c) => {
    requireScope(c, "generations:read");
    const q = c.req.valid("query");
    const page = await jobsTable.listJobs(c.var.db, c.var.auth.tenant.id, { status: q.status, modelId: q.model, after: q.after, limit: q.limit });
    return c.json(
      {
        object: "list" as const,
        data: await presentJobs(c.env, c.var.db, page.jobs),
        has_more: page.hasMore,
        next_cursor: page.hasMore ? page.jobs.at(-1)!.id : null,
      },
      200,
    );
  })
  .openapi(sign, async (c) => {
    requireScope(c, "generations:read");
    const { id, index } = c.req.valid("param");
    // The body is optional (an empty POST signs for an hour); when present, the JSON middleware has parsed it.
    const parsed = SignImageBody.safeParse(c.req.header("content-type") ? await c.req.json() : {});
    if (!parsed.success) throw ApiError.invalid("invalid_parameter", parsed.error.issues[0]!.message, "expires_in_seconds");
    const { expires_in_seconds } = parsed.data;
    const job = await jobsTable.getJob(c.var.db, c.var.auth.tenant.id, id);
    if (!job) throw ApiError.notFound("generation", id, "id");
    const image = (await jobsTable.jobImages(c.var.db, [id])).find((img) => img.index === index && img.deletedAt === null);
    if (!image) throw new ApiError(404, "not_found_error", "image_not_found", `Generation '${id}' has no image ${index} (not finished, or past retention).`, "index");
    const url = await objectStore(c.env).presignGet(image.storageKey, expires_in_seconds);
    return c.json({ url, url_expires_at: iso(Date.now() + expires_in_seconds * 1000)! }, 200);
  })
  .openapi(events, async (c) => {
    requireScope(c, "generations:read");
    const { id } = c.req.valid("param");
    const tenantId = c.var.auth.tenant.id;
    const first = await jobsTable.getJob(c.var.db, tenantId, id);
    if (!first) throw ApiError.notFound("generation", id, "id");
    const bell = doorbell(c.env, jobTopic(id));
    const encoder = new TextEncoder();
    const db = c.var.db;
    const env = c.env;
    // Changes are announced on the job's doorbell (lease, progress, completion, cancel): no polling of D1.
    const stream = new ReadableStream<Uint8Array>({
      async start(controller) {
        let last = "";
        try {
          for (;;) {
            const seq = await bell.current();
            const job = await jobsTable.getJob(db, tenantId, id);
            if (!job) break;
            const state = `${job.status}|${job.progressStep}|${job.progressTotal}|${job.attempts}`;
            if (state !== last) {
              last = state;
              controller.enqueue(encoder.encode(`event: generation\ndata: ${JSON.stringify(await loadPresentedJob(env, db, job))}\n\n`));
            }
            if (TERMINAL.has(job.status)) break;
            if (!(await bell.wait(seq, KEEPALIVE_MS))) controller.enqueue(encoder.encode(": keep-alive\n\n"));
          }
        } finally {
          controller.close();
        }
      },
    });
    return c.body(stream, 200, { "content-type": "text/event-stream", "cache-control": "no-cache", connection: "keep-alive" }) as never;
  })
  .openapi(cancel, async (c) => {
    requireScope(c, "generations:write");
    const { id } = c.req.valid("param");
    const tenantId = c.var.auth.tenant.id;
    const canceled = await jobsTable.cancelJob(c.var.db, tenantId, id, Date.now());
    if (canceled) {
      await doorbell(c.env, jobTopic(id)).ring();
      await generationEnded(c.env, c.var.db, canceled, (p) => c.executionCtx.waitUntil(p));
      return c.json(presentJob(canceled, []), 200);
    }
    const job = await jobsTable.getJob(c.var.db, tenantId, id);
    if (!job) throw ApiError.notFound("generation", id, "id");
    if (job.status === "canceled") return c.json(presentJob(job, []), 200);
    throw ApiError.conflict("job_already_finished", `Generation '${id}' already ${job.status}; it cannot be canceled.`);
  });
