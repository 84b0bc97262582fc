import { env, exports } from "cloudflare:workers";
import { beforeAll, describe, expect, it } from "vitest";
import { call, completeLeased, generate, lease, newRunner, newTenant, registerModel } from "./helpers.ts";

const worker = (exports as unknown as { default: Fetcher }).default;

beforeAll(async () => {
  await registerModel();
});

/** A reader of `event: generation` payloads, one at a time; undefined once the stream ended. */
function eventReader(res: Response): () => Promise<any> {
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  return async () => {
    for (;;) {
      let cut: number;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = block.split("\n").find((l) => l.startsWith("data: "));
        if (block.startsWith("event: generation") && data) return JSON.parse(data.slice(6));
      }
      const { done, value } = await reader.read();
      if (done) return undefined;
      buffer += value;
    }
  };
}

/** Reads `event: generation` payloads until the stream ends. */
async function readEvents(res: Response): Promise<any[]> {
  const next = eventReader(res);
  const out: any[] = [];
  for (let event = await next(); event; event = await next()) out.push(event);
  return out;
}

const follow = (key: string, id: string) =>
  worker.fetch(
    new Request(`http://edge.test/v1/generations/${id}/events`, { headers: { authorization: `Bearer ${key}` } }),
  );

describe("generation events (SSE)", () => {
  it("streams each change of status and progress, and ends after the final state", async () => {
    const t = await newTenant("sse");
    const runner = await newRunner("sse");
    const job = await generate(t.key);
    const res = await follow(t.key, job.body.id);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("text/event-stream");
    const reading = readEvents(res);
    const l = await lease(runner.token);
    for (const step of [1, 2, 3, 4]) {
      await call("POST", `/internal/v1/jobs/${job.body.id}/heartbeat`, {
        token: runner.token,
        body: { lease_id: l.body.lease_id, progress: { step, total: 4 } },
      });
    }
    await completeLeased(runner.token, l.body);
    const seen = await reading;
    expect(seen[0].status).toBe("queued");
    expect(seen.at(-1).status).toBe("succeeded");
    expect(seen.at(-1).images).toHaveLength(1);
    const steps = seen.filter((g) => g.status === "running" && g.progress).map((g) => g.progress.step);
    expect(steps.length).toBeGreaterThan(0);
    expect(steps).toEqual([...steps].sort((a, b) => a - b));
  });

  it("is the tenant's own: another tenant gets the 404 of a missing generation", async () => {
    const a = await newTenant("sse-a");
    const b = await newTenant("sse-b");
    const job = await generate(a.key);
    const r = await call("GET", `/v1/generations/${job.body.id}/events`, { token: b.key });
    expect(r.status).toBe(404);
  });
  // The stream's keep-alive is 15 s: a requeue that is not announced is only seen when it fires.
  it.each(["a retryable failure", "an expired lease"])(
    "a watcher hears of a requeue after %s at once",
    async (cause) => {
      // A model of its own, so that no other test's queued job is leased instead.
      const model = `requeue-${cause.length}`;
      await registerModel(model);
      const t = await newTenant(`sse-${model}`);
      const runner = await newRunner("sse-requeue");
      const job = await generate(t.key, { model });
      const next = eventReader(await follow(t.key, job.body.id));
      expect((await next()).status).toBe("queued");
      const l = await lease(runner.token, { models: [model] });
      expect(l.body.job.id).toBe(job.body.id);
      expect(await next()).toMatchObject({ status: "running", attempts: 1 });
      const start = Date.now();
      if (cause === "a retryable failure") {
        const failed = await call("POST", `/internal/v1/jobs/${job.body.id}/fail`, {
          token: runner.token,
          body: { lease_id: l.body.lease_id, error: { code: "oom", message: "out of memory" }, retryable: true },
        });
        expect(failed.status).toBe(200);
      } else {
        await env.DB.prepare("UPDATE jobs SET lease_expires_at = ? WHERE id = ?")
          .bind(Date.now() - 1, job.body.id)
          .run();
        // Any lease call requeues expired leases first; this one asks for another model, so nothing re-leases the job.
        expect((await lease(runner.token, { models: ["model-without-jobs"] })).status).toBe(204);
      }
      const requeued = await next();
      expect(requeued).toMatchObject({ status: "queued", attempts: 1 });
      expect(Date.now() - start).toBeLessThan(2_000);
      await call("POST", `/v1/generations/${job.body.id}/cancel`, { token: t.key });
      expect((await next()).status).toBe("canceled");
      expect(await next()).toBeUndefined();
    },
  );
  it("a stream ends when the key it was opened with is revoked", async () => {
    await registerModel("sse-revoke-model");
    const t = await newTenant("sse-revoke");
    const runner = await newRunner("sse-revoke");
    const extra = await call("POST", "/v1/keys", { token: t.key, body: { name: "watcher" } });
    const job = await generate(t.key, { model: "sse-revoke-model" });
    const next = eventReader(await follow(extra.body.secret, job.body.id));
    expect((await next()).status).toBe("queued");
    expect((await call("DELETE", `/v1/keys/${extra.body.id}`, { token: t.key })).status).toBe(200);
    // The next change would be news to the revoked key: the stream ends instead of telling it.
    expect((await lease(runner.token, { models: ["sse-revoke-model"] })).status).toBe(200);
    expect(await next()).toBeUndefined();
  });
});
