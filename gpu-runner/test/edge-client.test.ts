/** The runner's HTTP client against a stand-in edge on 127.0.0.1: the SDK's retry policy, Retry-After included. */
import { createServer, type Server } from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EdgeClient, EdgeError } from "../src/runner/edge-client.ts";

let server: Server;
let base: string;
/** Per path, the answers still to give (status and headers); then 200. */
const script = new Map<string, Array<{ status: number; headers?: Record<string, string> }>>();
const seen: Array<{ path: string; at: number }> = [];

beforeAll(async () => {
  server = createServer((req, res) => {
    req.resume();
    seen.push({ path: req.url!, at: Date.now() });
    const next = script.get(req.url!)?.shift();
    if (next)
      return res
        .writeHead(next.status, { "content-type": "application/json", ...next.headers })
        .end(JSON.stringify({ error: { code: "busy", message: "busy" } }));
    res
      .writeHead(200, { "content-type": "application/json" })
      .end(JSON.stringify({ cancel: false, lease_expires_at: null }));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
});
afterAll(() => server.close());

// Backoff alone would wait 10-25 ms: a wait near a second is the server's Retry-After.
const client = () => new EdgeClient(base, "igr_test", { attempts: 4, baseMs: 10, maxMs: 20 });
const gaps = (path: string) =>
  seen
    .filter((s) => s.path === path)
    .map((s, i, all) => (i ? s.at - all[i - 1]!.at : 0))
    .slice(1);

describe("edge client retries", () => {
  it("a 429 with Retry-After is retried after that delay", async () => {
    script.set("/internal/v1/jobs/j1/heartbeat", [{ status: 429, headers: { "retry-after": "1" } }]);
    const hb = await client().heartbeat("j1", { lease_id: "l" });
    expect(hb.cancel).toBe(false);
    const [gap] = gaps("/internal/v1/jobs/j1/heartbeat");
    expect(gap).toBeGreaterThanOrEqual(950);
  });

  it("a 503 from storage with Retry-After is retried after that delay, then without it by backoff", async () => {
    script.set("/store/a.png", [{ status: 503, headers: { "retry-after": "1" } }, { status: 503 }]);
    await client().upload(`${base}/store/a.png`, new Uint8Array(8), { "content-type": "image/png" });
    const [first, second] = gaps("/store/a.png");
    expect(first).toBeGreaterThanOrEqual(950);
    expect(second).toBeLessThan(500);
  });

  it("other 4xx answers are not retried", async () => {
    script.set("/internal/v1/jobs/j2/fail", [{ status: 409 }]);
    const err = await client()
      .fail("j2", { lease_id: "l", error: { code: "runner_error", message: "x" } })
      .catch((e) => e);
    expect(err).toBeInstanceOf(EdgeError);
    expect(err).toMatchObject({ status: 409, code: "busy" });
    expect(seen.filter((s) => s.path === "/internal/v1/jobs/j2/fail")).toHaveLength(1);
  });
});
