/** `/v1/generations`: create (with `Prefer: wait`), get, list, cancel, re-sign an image URL, follow as SSE. */
import { createRoute, z } from "@hono/zod-openapi";
import { jobsTable } from "@imagegen/db";
import {
  CreateGenerationBody,
  errorResponses,
  Generation,
  GenerationList,
  IdParam,
  iso,
  ListGenerationsQuery,
  SignedImageUrl,
  SignImageBody,
} from "@imagegen/contracts";
import { requireScope, stillAuthenticated } from "../auth/middleware.ts";
import { router } from "../context.ts";
import { ApiError } from "../errors.ts";
import { loadPresentedJob, presentJob, presentJobs } from "../generations/present.ts";
import { submitGeneration } from "../generations/submit.ts";
import { announce, announcerOf } from "../jobs/announce.ts";
import { followJob, waitForEnd } from "../jobs/follow.ts";
import { objectStore } from "../storage/index.ts";

const TERMINAL = new Set(jobsTable.TERMINAL);
const MAX_WAIT_SECONDS = 60;

/** `Prefer: wait=N` (RFC 7240): hold the answer until the job ends or N seconds pass. */
function preferWait(header: string | undefined): number | undefined {
  const m = header?.match(/(?:^|[,;\s])wait\s*=\s*(\d+)/i);
  return m ? Math.min(Number(m[1]), MAX_WAIT_SECONDS) : undefined;
}

const create = createRoute({
  method: "post",
  path: "/generations",
  operationId: "createGeneration",
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
    200: {
      description: "The job ended within the wait, or an idempotent replay",
      content: { "application/json": { schema: Generation } },
    },
    202: {
      description: "Queued (or still running after the wait)",
      content: { "application/json": { schema: Generation } },
    },
    ...errorResponses(400, 401, 403, 404, 413, 415, 422, 429),
  },
});

const get = createRoute({
  method: "get",
  path: "/generations/{id}",
  operationId: "getGeneration",
  tags: ["generations"],
  summary: "Get a generation",
  request: { params: IdParam("generation id", "gen_01hzy3k8m2q9w7e4r5t6y7u8i9") },
  responses: {
    200: { description: "The generation", content: { "application/json": { schema: Generation } } },
    ...errorResponses(401, 404, 429),
  },
});

const list = createRoute({
  method: "get",
  path: "/generations",
  operationId: "listGenerations",
  tags: ["generations"],
  summary: "List generations, newest first",
  request: { query: ListGenerationsQuery },
  responses: {
    200: { description: "A page of generations", content: { "application/json": { schema: GenerationList } } },
    ...errorResponses(400, 401, 429),
  },
});

const cancel = createRoute({
  method: "post",
  path: "/generations/{id}/cancel",
  operationId: "cancelGeneration",
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
  operationId: "signGenerationImageUrl",
  tags: ["generations"],
  summary: "Sign a new GET URL for an image, with its own lifetime",
  request: {
    params: z.object({
      id: z
        .string()
        .min(1)
        .max(64)
        .openapi({ param: { name: "id", in: "path" } }),
      // Coerced from the path's text, so the generator would call it optional and nullable: a path parameter never is.
      index: z.coerce
        .number()
        .int()
        .min(0)
        .max(63)
        .openapi({ param: { name: "index", in: "path", required: true }, type: "integer", minimum: 0, maximum: 63 }),
    }),
    body: { content: { "application/json": { schema: SignImageBody } }, required: false },
  },
  responses: {
    200: { description: "A signed URL", content: { "application/json": { schema: SignedImageUrl } } },
    ...errorResponses(400, 401, 404, 429),
  },
});

/** One server-sent event (the schema applies to each event, as SSE tools read it): `data` is the generation as JSON. */
const SseEvent = z.object({
  id: z.string().optional(),
  event: z.string().optional(),
  data: z.string(),
  retry: z.number().int().optional(),
});

const events = createRoute({
  method: "get",
  path: "/generations/{id}/events",
  operationId: "streamGenerationEvents",
  tags: ["generations"],
  summary: "Follow a generation as server-sent events",
  description:
    "Sends `generation` events (the whole generation object) whenever its status or progress changes, and closes after the final state, or once the key it was opened with is revoked or expires. A comment line every 15 s keeps idle connections open.",
  request: { params: IdParam("generation id", "gen_01hzy3k8m2q9w7e4r5t6y7u8i9") },
  responses: {
    200: { description: "An event stream", content: { "text/event-stream": { schema: SseEvent } } },
    ...errorResponses(401, 404, 429),
  },
});

const KEEPALIVE_MS = 15_000;
/** How often an idle stream checks that its key still authenticates (a revocation rings no job's doorbell). */
const KEY_CHECK_MS = 5_000;

export const generations = router()
  .openapi(create, async (c) => {
    const headers = c.req.valid("header");
    const { job, replayed, seq } = await submitGeneration(c, c.req.valid("json"), headers["idempotency-key"]);
    let current = job;
    let images: jobsTable.Image[] | undefined;
    // A retry after a dropped answer waits as the first request did: it is the same request.
    const wait = preferWait(headers.prefer);
    if (wait !== undefined) {
      c.header("Preference-Applied", `wait=${wait}`);
      const from = seq !== undefined ? { job, seq } : undefined;
      const ended = await waitForEnd(c.env, c.var.db, c.var.auth.tenant.id, job.id, wait, from);
      if (ended) ({ job: current, images } = ended);
    }
    if (replayed) {
      c.header("Idempotent-Replayed", "true");
      return c.json(await loadPresentedJob(c.env, c.var.db, current, images), 200);
    }
    c.header("Location", `/v1/generations/${current.id}`);
    return c.json(await loadPresentedJob(c.env, c.var.db, current, images), TERMINAL.has(current.status) ? 200 : 202);
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
    const page = await jobsTable.listJobs(c.var.db, c.var.auth.tenant.id, {
      status: q.status,
      modelId: q.model,
      after: q.after,
      limit: q.limit,
    });
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
    if (!parsed.success)
      throw ApiError.invalid("invalid_parameter", parsed.error.issues[0]!.message, "expires_in_seconds");
    const { expires_in_seconds } = parsed.data;
    const job = await jobsTable.getJob(c.var.db, c.var.auth.tenant.id, id);
    if (!job) throw ApiError.notFound("generation", id, "id");
    const image = (await jobsTable.jobImages(c.var.db, [id])).find(
      (img) => img.index === index && img.deletedAt === null,
    );
    if (!image)
      throw new ApiError(
        404,
        "not_found_error",
        "image_not_found",
        `Generation '${id}' has no image ${index} (not finished, or past retention).`,
        "index",
      );
    const url = await objectStore(c.env).presignGet(image.storageKey, expires_in_seconds);
    return c.json({ url, url_expires_at: iso(Date.now() + expires_in_seconds * 1000)! }, 200);
  })
  .openapi(events, async (c) => {
    requireScope(c, "generations:read");
    const { id } = c.req.valid("param");
    const tenantId = c.var.auth.tenant.id;
    const first = await jobsTable.getJob(c.var.db, tenantId, id);
    if (!first) throw ApiError.notFound("generation", id, "id");
    const encoder = new TextEncoder();
    const changes = followJob(c.env, c.var.db, tenantId, id, { idleMs: KEY_CHECK_MS });
    const present = (job: jobsTable.Job) => loadPresentedJob(c.env, c.var.db, job);
    const auth = c.var.auth;
    const stream = new ReadableStream<Uint8Array>({
      async start(controller) {
        // The state is the event's id: a client reconnecting with Last-Event-ID is not sent that state again.
        let last = c.req.header("last-event-id") ?? "";
        let lastWrite = Date.now();
        try {
          for await (const job of changes) {
            // The stream reads with its key or session: once that is revoked or expired (or the tenant suspended), it ends.
            if (!(await stillAuthenticated(c.var.db, auth))) break;
            if (!job) {
              if (Date.now() - lastWrite >= KEEPALIVE_MS) {
                controller.enqueue(encoder.encode(": keep-alive\n\n"));
                lastWrite = Date.now();
              }
              continue;
            }
            const state = `${job.status}|${job.progressStep}|${job.progressTotal}|${job.attempts}`;
            if (state === last) continue;
            last = state;
            controller.enqueue(
              encoder.encode(`event: generation\nid: ${state}\ndata: ${JSON.stringify(await present(job))}\n\n`),
            );
            lastWrite = Date.now();
          }
        } finally {
          controller.close();
        }
      },
    });
    return c.body(stream, 200, {
      "content-type": "text/event-stream",
      "cache-control": "no-cache",
      connection: "keep-alive",
    }) as never;
  })
  .openapi(cancel, async (c) => {
    requireScope(c, "generations:write");
    const { id } = c.req.valid("param");
    const tenantId = c.var.auth.tenant.id;
    const canceled = await jobsTable.cancelJob(c.var.db, tenantId, id, Date.now());
    if (canceled) {
      await announce(announcerOf(c), canceled);
      return c.json(presentJob(canceled, []), 200);
    }
    const job = await jobsTable.getJob(c.var.db, tenantId, id);
    if (!job) throw ApiError.notFound("generation", id, "id");
    if (job.status === "canceled") return c.json(presentJob(job, []), 200);
    throw ApiError.conflict("job_already_finished", `Generation '${id}' already ${job.status}; it cannot be canceled.`);
  });
