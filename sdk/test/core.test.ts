import { createServer, type Server } from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { APIConnectionError, ImageGen, NotFoundError, RateLimitError } from "../src/index.ts";

interface Seen {
  method: string;
  url: string;
  headers: Record<string, string | string[] | undefined>;
  at: number;
}
let server: Server;
let base: string;
const seen: Seen[] = [];
/** What the next answers are, by path: status, headers, body. */
const script = new Map<string, Array<{ status: number; headers?: Record<string, string>; body?: unknown }>>();

beforeAll(async () => {
  server = createServer((req, res) => {
    seen.push({ method: req.method!, url: req.url!, headers: req.headers, at: Date.now() });
    const path = req.url!.split("?")[0]!;
    const next = script.get(path)?.shift() ?? { status: 200, body: { ok: true } };
    if (next.status === 0) return req.socket.destroy(); // the connection drops
    res
      .writeHead(next.status, { "content-type": "application/json", ...next.headers })
      .end(JSON.stringify(next.body ?? {}));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
});
afterAll(() => server.close());

const client = (o: Record<string, unknown> = {}) => new ImageGen({ apiKey: "igk_test", baseURL: base, ...o });
const error = (code: string, status: number) => ({
  error: { type: "x", code, message: `${code} happened`, param: "id", request_id: `req_${status}` },
});

describe("SDK core", () => {
  it("retries 5xx and honours Retry-After, keeping one Idempotency-Key for a POST", async () => {
    seen.length = 0;
    script.set("/v1/generations", [
      { status: 503, body: error("unavailable", 503) },
      { status: 429, headers: { "retry-after": "1" }, body: error("rate_limit_exceeded", 429) },
      { status: 202, body: { id: "gen_1", status: "queued" } },
    ]);
    const g = await client({ maxRetries: 3 }).generations.create({ prompt: "a red circle" });
    expect(g.id).toBe("gen_1");
    expect(seen).toHaveLength(3);
    const keys = new Set(seen.map((s) => s.headers["idempotency-key"]));
    expect(keys.size).toBe(1);
    expect([...keys][0]).toMatch(/^[0-9a-f-]{36}$/);
    expect(seen[2]!.at - seen[1]!.at).toBeGreaterThanOrEqual(950);
    expect(seen[0]!.headers.authorization).toBe("Bearer igk_test");
  });

  it("maps statuses to error classes carrying code, param and request id; 4xx are not retried", async () => {
    seen.length = 0;
    script.set("/v1/generations/gen_x", [{ status: 404, body: error("resource_not_found", 404) }]);
    const err = await client()
      .generations.get("gen_x")
      .catch((e) => e);
    expect(err).toBeInstanceOf(NotFoundError);
    expect(err).toMatchObject({ status: 404, code: "resource_not_found", param: "id", requestId: "req_404" });
    expect(seen).toHaveLength(1);
    script.set(
      "/v1/models",
      [0, 1, 2].map(() => ({ status: 429, headers: { "retry-after": "0" }, body: error("rate_limit_exceeded", 429) })),
    );
    await expect(client({ maxRetries: 2 }).models.list()).rejects.toBeInstanceOf(RateLimitError);
  });

  it("reports a dropped connection or a timeout as APIConnectionError after its retries", async () => {
    script.set("/v1/keys", [{ status: 0 }, { status: 0 }]);
    await expect(client({ maxRetries: 1 }).keys.list()).rejects.toBeInstanceOf(APIConnectionError);
    const slow = createServer(() => {}); // never answers
    await new Promise<void>((r) => slow.listen(0, "127.0.0.1", r));
    const url = `http://127.0.0.1:${(slow.address() as { port: number }).port}`;
    const t = Date.now();
    await expect(
      new ImageGen({ apiKey: "k", baseURL: url, timeout: 300, maxRetries: 0 }).models.list(),
    ).rejects.toBeInstanceOf(APIConnectionError);
    expect(Date.now() - t).toBeLessThan(3_000);
    slow.closeAllConnections();
    slow.close();
  });

  it("refuses to start without an API key", () => {
    expect(() => new ImageGen({ baseURL: base, apiKey: "" })).toThrow(/API key/);
  });
});
