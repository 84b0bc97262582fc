/** OpenAI-compatible `POST /v1/images/generations`: a synchronous face on the same generations. */
import { createRoute } from "@hono/zod-openapi";
import { jobsTable } from "@imagegen/db";
import { router } from "../context.ts";
import { ApiError } from "../errors.ts";
import { errorResponses, OpenAIImageBody, OpenAIImagesResponse } from "@imagegen/contracts";
import { loadPresentedJob } from "../generations/present.ts";
import { submitGeneration } from "../generations/submit.ts";
import { waitForJob } from "../jobs/follow.ts";
import { objectStore } from "../storage/index.ts";

/** How long the synchronous answer waits for the job (the official client's default timeout is 10 minutes). */
const WAIT_SECONDS = 60;

const route = createRoute({
  method: "post",
  path: "/images/generations",
  tags: ["openai"],
  summary: "Create images (OpenAI-compatible)",
  description: "Answers when the images are ready. Extensions: negative_prompt, seed, sampler, steps, guidance, loras, controlnets, cache.",
  request: { body: { content: { "application/json": { schema: OpenAIImageBody } }, required: true } },
  responses: {
    200: { description: "The images", content: { "application/json": { schema: OpenAIImagesResponse } } },
    ...errorResponses(400, 401, 403, 404, 429),
  },
});

export const openai = router().openapi(route, async (c) => {
  const b = c.req.valid("json");
  const [width, height] = b.size ? b.size.split("x").map(Number) : [undefined, undefined];
  const { job } = await submitGeneration(
    c,
    {
      prompt: b.prompt,
      n: b.n,
      output_ttl_seconds: 3600,
      loras: b.loras ?? [],
      controlnets: b.controlnets ?? [],
      ...(b.model ? { model: b.model } : {}),
      ...(width ? { width } : {}),
      ...(height ? { height } : {}),
      ...(b.negative_prompt !== undefined ? { negative_prompt: b.negative_prompt } : {}),
      ...(b.seed !== undefined ? { seed: b.seed } : {}),
      ...(b.sampler ? { sampler: b.sampler } : {}),
      ...(b.steps !== undefined ? { steps: b.steps } : {}),
      ...(b.guidance !== undefined ? { guidance: b.guidance } : {}),
      ...(b.cache ? { cache: b.cache } : {}),
    },
    c.req.header("idempotency-key"),
  );
  const done = (await waitForJob(c.env, c.var.db, c.var.auth.tenant.id, job.id, WAIT_SECONDS)) ?? job;
  if (done.status === "queued" || done.status === "running") {
    throw new ApiError(503, "api_error", "generation_timeout", `The generation did not finish within ${WAIT_SECONDS} s; it continues as ${job.id} (GET /v1/generations/${job.id}).`, undefined, { "Retry-After": "5" });
  }
  if (done.status !== "succeeded") {
    throw new ApiError(500, "api_error", done.errorCode ?? done.status, done.errorMessage ?? `The generation ${done.status}.`);
  }
  const presented = await loadPresentedJob(c.env, c.var.db, done);
  const images = await jobsTable.jobImages(c.var.db, [done.id]);
  const data = await Promise.all(
    presented.images.map(async (img) => {
      if (b.response_format === "url") return { url: img.url ?? undefined };
      const stored = images.find((i) => i.index === img.index)!;
      const bytes = await objectStore(c.env).get(stored.storageKey);
      if (!bytes) throw new ApiError(500, "api_error", "image_unavailable", "The image could not be read back from storage.");
      let bin = "";
      for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
      return { b64_json: btoa(bin) };
    }),
  );
  return c.json({ created: Math.floor(done.createdAt / 1000), data, generation_id: done.id }, 200);
});
