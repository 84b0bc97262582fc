/** Creating a generation: the request as the job will run it, within the tenant's caps, exactly once per Idempotency-Key. */
import { addonsTable, jobsTable, type Db } from "@imagegen/db";
import {
  CONTROL_IMAGE_PREFIX,
  formatAddonRef,
  MAX_CONTROL_PIXELS,
  MAX_SEED,
  ModelSpec,
  parseAddonRef,
  type CreateGenerationBody,
  type GenerationRequest,
} from "@imagegen/contracts";
import { PNG_HEADER_BYTES, plainPngProblem, readPngHeader } from "@imagegen/formats/png";
import type { Context } from "hono";
import { requireScope } from "../auth/middleware.ts";
import type { AppEnv } from "../context.ts";
import type { Env } from "../env.ts";
import { ApiError } from "../errors.ts";
import { announceCreated, announcerOf } from "../jobs/announce.ts";
import { canonicalJson, sha256Hex } from "../lib/crypto.ts";
import { newId } from "../lib/ids.ts";
import { mark } from "../middleware/server-timing.ts";
import { cachedModel } from "../models/cache.ts";
import { assertWebhookDestination } from "../webhooks/endpoints.ts";

/**
 * Why the runner would refuse this control image (a data: URL the schema has let through), or undefined. Only the
 * PNG's header is decoded: the pixels are the runner's to decode, but a file that is not a plain PNG fails here.
 */
export function controlImageProblem(dataUrl: string): string | undefined {
  // 44 base64 characters are 33 bytes: exactly the signature and the image header.
  const head = dataUrl.slice(
    CONTROL_IMAGE_PREFIX.length,
    CONTROL_IMAGE_PREFIX.length + Math.ceil(PNG_HEADER_BYTES / 3) * 4,
  );
  try {
    return plainPngProblem(readPngHeader(Uint8Array.from(atob(head), (ch) => ch.charCodeAt(0))), MAX_CONTROL_PIXELS);
  } catch (err) {
    return (err as Error).message;
  }
}

/** Applies the model's limits and defaults, resolves add-ons, and picks a seed: the request as the job runs it. */
async function normalise(
  env: Env,
  db: Db,
  tenantId: string,
  body: CreateGenerationBody,
  modelId: string,
): Promise<{ request: GenerationRequest; addonRefs: string[] }> {
  const model = await cachedModel(env, db, modelId);
  if (!model || model.status !== "active") throw ApiError.notFound("model", modelId, "model");
  const spec = ModelSpec.parse(model.spec);
  const width = body.width ?? spec.default_width;
  const height = body.height ?? spec.default_height;
  for (const [param, v] of [
    ["width", width],
    ["height", height],
  ] as const) {
    if (v < spec.min_size || v > spec.max_size || v % spec.multiple_of !== 0) {
      throw ApiError.invalid(
        "invalid_size",
        `${param} must be between ${spec.min_size} and ${spec.max_size} and a multiple of ${spec.multiple_of} for model '${model.id}'; got ${v}.`,
        param,
      );
    }
  }
  if (body.n > spec.max_images)
    throw ApiError.invalid("invalid_parameter", `n must be at most ${spec.max_images} for model '${model.id}'.`, "n");
  const sampler = body.sampler ?? spec.default_sampler;
  const limits = spec.samplers[sampler];
  if (!limits) {
    const names = Object.keys(spec.samplers).join(", ");
    throw ApiError.invalid(
      "unsupported_sampler",
      `Model '${model.id}' does not support sampler '${sampler}'; it supports: ${names}.`,
      "sampler",
    );
  }
  const steps = body.steps ?? limits.default_steps;
  if (steps < limits.min_steps || steps > limits.max_steps) {
    throw ApiError.invalid(
      "invalid_steps",
      `steps must be between ${limits.min_steps} and ${limits.max_steps} for sampler '${sampler}'.`,
      "steps",
    );
  }
  const guidance = body.guidance ?? limits.default_guidance;
  if (guidance > limits.max_guidance) {
    throw ApiError.invalid(
      "invalid_guidance",
      `guidance must be at most ${limits.max_guidance} for sampler '${sampler}'.`,
      "guidance",
    );
  }
  const cache = body.cache ?? { mode: "off" as const };
  if (cache.mode === "deepcache" && !spec.supports_deepcache) {
    throw ApiError.invalid("unsupported_cache", `Model '${model.id}' does not support block caching.`, "cache");
  }
  if (body.loras.length && !spec.supports_lora)
    throw ApiError.invalid("unsupported_addon", `Model '${model.id}' does not take LoRAs.`, "loras");
  if (body.controlnets.length && !spec.supports_controlnet) {
    throw ApiError.invalid("unsupported_addon", `Model '${model.id}' does not take ControlNets.`, "controlnets");
  }
  body.controlnets.forEach((cn, i) => {
    const problem = controlImageProblem(cn.image);
    if (problem)
      throw ApiError.invalid("invalid_control_image", `controlnets[${i}].image: ${problem}`, `controlnets[${i}].image`);
  });

  const resolve = async (ref: string, kind: "lora" | "controlnet", param: string) => {
    const { id, version } = parseAddonRef(ref);
    const found = await addonsTable.resolveVisibleVersion(db, tenantId, id, version);
    if (!found) {
      // Also what a foreign private add-on looks like: its existence is not revealed.
      throw new ApiError(
        404,
        "not_found_error",
        "addon_not_found",
        `No ready add-on '${ref}' is visible to this tenant.`,
        param,
      );
    }
    if (found.addon.kind !== kind)
      throw ApiError.invalid("addon_kind_mismatch", `Add-on '${ref}' is a ${found.addon.kind}, not a ${kind}.`, param);
    if (found.version.status !== "ready") {
      throw ApiError.invalid(
        "addon_not_ready",
        `Add-on '${ref}' version ${found.version.version} is ${found.version.status}${found.version.rejectionReason ? `: ${found.version.rejectionReason}` : ""}.`,
        param,
      );
    }
    if (found.addon.family !== model.family) {
      throw ApiError.invalid(
        "addon_family_mismatch",
        `Add-on '${ref}' is for model family '${found.addon.family}', not '${model.family}'.`,
        param,
      );
    }
    return { id: found.addon.id, version: found.version.version, name: found.addon.name, sha256: found.version.sha256 };
  };
  const loras = await Promise.all(
    body.loras.map(async (l, i) => ({
      ...(await resolve(l.id, "lora", `loras[${i}].id`)),
      scale: l.scale,
      allow_partial: l.allow_partial,
    })),
  );
  const controlnets = await Promise.all(
    body.controlnets.map(async (cn, i) => ({
      ...(await resolve(cn.id, "controlnet", `controlnets[${i}].id`)),
      scale: cn.scale,
      image: cn.image,
    })),
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
  const addonRefs = [...loras, ...controlnets].map((a) => formatAddonRef(a.id, a.version));
  return { request, addonRefs };
}

function secondsToUtcMidnight(now: number): number {
  const d = new Date(now);
  return Math.ceil((Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate() + 1) - now) / 1000);
}

/**
 * Validates, normalises and queues a generation for the authenticated tenant (or finds the job an earlier request
 * with the same Idempotency-Key created), within the tenant's caps, and announces it. Shared by
 * `/v1/generations` and the OpenAI-compatible `/v1/images/generations`. `retrySince`: the request is a client's
 * automatic retry without a key, so the newest job this API key created since then from the same body is its job.
 * `seq`: for a job this call created, its doorbell's number after the creation was announced (`waitForEnd`).
 */
export async function submitGeneration(
  c: Context<AppEnv>,
  body: CreateGenerationBody,
  idempotencyKey: string | undefined,
  retrySince?: number,
): Promise<{ job: jobsTable.Job; replayed: boolean; seq?: number }> {
  requireScope(c, "generations:write");
  const { tenant, key } = c.var.auth;
  const { db, settings } = c.var;
  const requestHash = await sha256Hex(canonicalJson(body));
  const replay = (existing: jobsTable.Job) => {
    if (existing.requestHash !== requestHash) {
      throw new ApiError(
        422,
        "idempotency_error",
        "idempotency_key_reused",
        "This Idempotency-Key was used with a different request body.",
      );
    }
    return { job: existing, replayed: true };
  };
  if (idempotencyKey) {
    const existing = await jobsTable.findByIdempotencyKey(db, tenant.id, idempotencyKey);
    if (existing) return replay(existing);
  } else if (retrySince !== undefined && key) {
    const existing = await jobsTable.findRecentByRequestHash(db, tenant.id, key.id, requestHash, retrySince);
    if (existing) return { job: existing, replayed: true };
  }
  if (body.webhook_url) assertWebhookDestination(c.env, body.webhook_url, "webhook_url");
  const { request, addonRefs } = await normalise(c.env, db, tenant.id, body, body.model ?? settings.defaultModel);
  const now = Date.now();
  let outcome: jobsTable.InsertOutcome;
  try {
    outcome = await jobsTable.insertJobWithinCaps(
      db,
      {
        id: newId("gen", now),
        tenantId: tenant.id,
        // Null for a signed-in user: usage counts it as the dashboard's.
        apiKeyId: key?.id ?? null,
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
    const existing =
      idempotencyKey && /UNIQUE/i.test(String(err))
        ? await jobsTable.findByIdempotencyKey(db, tenant.id, idempotencyKey)
        : undefined;
    if (existing) return replay(existing);
    throw err;
  }
  if (!outcome.ok) {
    if (outcome.reason === "concurrency") {
      throw new ApiError(
        429,
        "quota_exceeded_error",
        "concurrency_limit_exceeded",
        `This tenant already has ${tenant.maxConcurrentJobs ?? settings.defaultMaxConcurrentJobs} jobs queued or running; wait for one to finish.`,
        undefined,
        { "Retry-After": "1" },
      );
    }
    throw new ApiError(
      429,
      "quota_exceeded_error",
      "daily_image_quota_exceeded",
      `This request would exceed the tenant's ${tenant.maxImagesPerDay ?? settings.defaultMaxImagesPerDay} images per day.`,
      undefined,
      { "Retry-After": String(secondsToUtcMidnight(now)) },
    );
  }
  mark("inserted", outcome.job.id);
  const seq = await announceCreated(announcerOf(c), outcome.job);
  return { job: outcome.job, replayed: false, seq };
}
