/** OpenAI-compatible `POST /v1/images/generations`: a synchronous face on the same generations. */
import { createRoute, z } from "@hono/zod-openapi";
import { jobsTable } from "@imagegen/db";
import { router } from "../context.ts";
import { ApiError } from "../errors.ts";
import {
  errorResponses,
  INPUT_FAILURE_CODES,
  OpenAIImageBody,
  OpenAIImagesResponse,
  openAISize,
} from "@imagegen/contracts";
import { loadPresentedJob } from "../generations/present.ts";
import { submitGeneration } from "../generations/submit.ts";
import { waitForJob } from "../jobs/follow.ts";
import { objectStore } from "../storage/index.ts";

/** How long the synchronous answer waits for the job (the official client's default timeout is 10 minutes). */
const WAIT_SECONDS = 60;
/**
 * The official clients retry a 5xx or a dropped connection without an idempotency key, marking each retry with
 * `X-Stainless-Retry-Count`; a retry within this window (their default timeout) of the same body from the same
 * key is answered with the first attempt's job instead of a second job.
 */
const RETRY_WINDOW_MS = 10 * 60_000;
const INPUT_FAILURES: ReadonlySet<string> = new Set(INPUT_FAILURE_CODES);

const route = createRoute({
  method: "post",
  path: "/images/generations",
  operationId: "createImage",
  tags: ["openai"],
  summary: "Create images (OpenAI-compatible)",
  description:
    "Answers when the images are ready. Extensions: negative_prompt, seed, sampler, steps, guidance, loras, controlnets, cache. `Idempotency-Key` makes retries safe; without one, a client's automatic retry (`X-Stainless-Retry-Count` > 0) of the same body gets the first attempt's generation. A generation that fails on its input answers 400.",
  request: {
    headers: z.object({
      "idempotency-key": z.string().min(1).max(255).optional(),
      "x-stainless-retry-count": z.string().max(8).optional(),
    }),
    body: { content: { "application/json": { schema: OpenAIImageBody } }, required: true },
  },
  responses: {
    200: { description: "The images", content: { "application/json": { schema: OpenAIImagesResponse } } },
    ...errorResponses(400, 401, 403, 404, 409, 422, 429),
  },
});

export const openai = router().openapi(route, async (c) => {
  const b = c.req.valid("json");
  const size = openAISize(b.size);
  const retry = Number(c.req.header("x-stainless-retry-count") ?? 0) > 0;
  const { job } = await submitGeneration(
    c,
    {
      prompt: b.prompt,
      n: b.n,
      output_ttl_seconds: 3600,
      loras: b.loras ?? [],
      controlnets: b.controlnets ?? [],
      ...(b.model ? { model: b.model } : {}),
      ...size,
      ...(b.negative_prompt !== undefined ? { negative_prompt: b.negative_prompt } : {}),
      ...(b.seed !== undefined ? { seed: b.seed } : {}),
      ...(b.sampler ? { sampler: b.sampler } : {}),
      ...(b.steps !== undefined ? { steps: b.steps } : {}),
      ...(b.guidance !== undefined ? { guidance: b.guidance } : {}),
      ...(b.cache ? { cache: b.cache } : {}),
    },
    c.req.header("idempotency-key"),
    retry ? Date.now() - RETRY_WINDOW_MS : undefined,
  ).catch((err: unknown) => {
    // The model's size limits name width or height; here the client sent `size`.
    if (err instanceof ApiError && (err.param === "width" || err.param === "height"))
      throw new ApiError(err.status, err.type, err.code, `size: ${err.message}`, "size");
    throw err;
  });
  const done = (await waitForJob(c.env, c.var.db, c.var.auth.tenant.id, job.id, WAIT_SECONDS)) ?? job;
  if (done.status === "queued" || done.status === "running") {
    throw new ApiError(
      503,
      "api_error",
      "generation_timeout",
      `The generation did not finish within ${WAIT_SECONDS} s; it continues as ${job.id} (GET /v1/generations/${job.id}).`,
      undefined,
      { "Retry-After": "5" },
    );
  }
  if (done.status !== "succeeded") {
    // The job has had its attempts: a retry would get this same answer (and the same job), so say not to retry.
    const noRetry = { "x-should-retry": "false" };
    const message = done.errorMessage ?? `The generation ${done.status}.`;
    if (done.status === "failed" && done.errorCode && INPUT_FAILURES.has(done.errorCode)) {
      throw new ApiError(400, "invalid_request_error", done.errorCode, message, undefined, noRetry);
    }
    throw new ApiError(
      done.status === "canceled" ? 409 : 500,
      done.status === "canceled" ? "conflict_error" : "api_error",
      done.errorCode ?? done.status,
      message,
      undefined,
      noRetry,
    );
  }
  const presented = await loadPresentedJob(c.env, c.var.db, done);
  const images = await jobsTable.jobImages(c.var.db, [done.id]);
  const data = await Promise.all(
    presented.images.map(async (img) => {
      if (b.response_format === "url") return { url: img.url ?? undefined };
      const stored = images.find((i) => i.index === img.index)!;
      const bytes = await objectStore(c.env).get(stored.storageKey);
      if (!bytes)
        throw new ApiError(500, "api_error", "image_unavailable", "The image could not be read back from storage.");
      let bin = "";
      for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
      return { b64_json: btoa(bin) };
    }),
  );
  return c.json({ created: Math.floor(done.createdAt / 1000), data, generation_id: done.id }, 200);
});
