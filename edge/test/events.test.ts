import { exports } from "cloudflare:workers";
import { beforeAll, describe, expect, it } from "vitest";
import { call, completeLeased, generate, lease, newRunner, newTenant, registerModel } from "./helpers.ts";

const worker = (exports as unknown as { default: Fetcher }).default;

beforeAll(async () => {
  await registerModel();
});

/** Reads `event: generation` payloads until the stream ends. */
async function readEvents(res: Response): Promise<any[]> {
  const out: any[] = [];
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    buffer += value;
    let cut: number;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block.split("\n").find((l) => l.startsWith("data: "));
      if (block.startsWith("event: generation") && data) out.push(JSON.parse(data.slice(6)));
    }
  }
  return out;
}

describe("generation events (SSE)", () => {
  it("streams each change of status and progress, and ends after the final state", async () => {
    const t = await newTenant("sse");
    const runner = await newRunner("sse");
    const job = await generate(t.key);
    const res = await worker.fetch(new Request(`http://edge.test/v1/generations/${job.body.id}/events`, { headers: { authorization: `Bearer ${t.key}` } }));
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("text/event-stream");
    const reading = readEvents(res);
    const l = await lease(runner.token);
    for (const step of [1, 2, 3, 4]) {
      await call("POST", `/internal/v1/jobs/${job.body.id}/heartbeat`, { token: runner.token, body: { lease_id: l.body.lease_id, progress: { step, total: 4 } } });
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
});
