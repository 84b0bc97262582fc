import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { Webhook } from "standardwebhooks";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  APIConnectionError,
  APITimeoutError,
  APIUserAbortError,
  AuthenticationError,
  ImageGen,
  NotFoundError,
  signWebhook,
  verifyWebhook,
  WebhookVerificationError,
} from "../src/index.ts";

type Handler = (req: IncomingMessage, res: ServerResponse, body: Buffer) => void;
const routes = new Map<string, Handler>();
let base: string;
const server = createServer((req, res) => {
  const chunks: Buffer[] = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const path = req.url!.split("?")[0]!;
    const handler = routes.get(`${req.method} ${path}`);
    if (!handler) return res.writeHead(404, { "content-type": "text/html" }).end("<h1>nope</h1>");
    handler(req, res, Buffer.concat(chunks));
  });
});
beforeAll(async () => {
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
});
afterAll(() => {
  server.closeAllConnections();
  server.close();
});
const client = (o: Record<string, unknown> = {}) =>
  new ImageGen({ apiKey: "igk_test", baseURL: base, maxRetries: 0, ...o });
const json = (res: ServerResponse, status: number, body: unknown, requestId = "req_abc12345") =>
  res.writeHead(status, { "content-type": "application/json", "x-request-id": requestId }).end(JSON.stringify(body));
const gen = (status: string, step: number) => ({
  id: "gen_1",
  object: "generation",
  status,
  progress: { step, total: 4 },
});

describe("generations.stream", () => {
  it("reconnects with Last-Event-ID after a dropped connection and loses no event", async () => {
    const lastEventIds: Array<string | undefined> = [];
    const states = [gen("queued", 0), gen("running", 1), gen("running", 2), gen("running", 3), gen("succeeded", 4)];
    routes.set("GET /v1/generations/gen_1/events", (req, res) => {
      const lastId = req.headers["last-event-id"] as string | undefined;
      lastEventIds.push(lastId);
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write("retry: 50\n\n: keep-alive\n\n");
      const from = lastId ? Number(lastId) + 1 : 0;
      // The first connection drops after two events, the second after one more; the third runs to the end.
      const upTo = lastEventIds.length === 1 ? 2 : lastEventIds.length === 2 ? 3 : states.length;
      for (let i = from; i < upTo; i++)
        res.write(`id: ${i}\nevent: generation\ndata: ${JSON.stringify(states[i])}\n\n`);
      if (upTo < states.length) setTimeout(() => res.socket?.destroy(), 20);
      else res.end();
    });
    const seen: string[] = [];
    for await (const e of client().generations.stream("gen_1")) {
      expect(e.event).toBe("generation");
      seen.push(`${e.id}:${e.data.status}:${e.data.progress?.step}`);
    }
    expect(seen).toEqual(["0:queued:0", "1:running:1", "2:running:2", "3:running:3", "4:succeeded:4"]);
    expect(lastEventIds).toEqual([undefined, "1", "2"]);
  });

  it("does not retry an API error: another tenant's stream is a NotFoundError", async () => {
    let calls = 0;
    routes.set("GET /v1/generations/gen_other/events", (_req, res) => {
      calls++;
      json(res, 404, {
        error: {
          type: "not_found_error",
          code: "resource_not_found",
          message: "No generation 'gen_other'.",
          request_id: "req_404404404",
        },
      });
    });
    const err = await (async () => {
      for await (const _ of client().generations.stream("gen_other"));
    })().catch((e) => e);
    expect(err).toBeInstanceOf(NotFoundError);
    expect(err.requestId).toBe("req_404404404");
    expect(calls).toBe(1);
  });
});

describe("webhooks.verify (Standard Webhooks)", () => {
  const secret = `whsec_${Buffer.from("a secret of 24 bytes....").toString("base64")}`;
  const payload = JSON.stringify({ type: "generation.succeeded", data: { id: "gen_1" } });
  const official = new Webhook(secret);

  it("accepts what the official signer signs, and the official verifier accepts ours", async () => {
    const now = new Date();
    const sig = official.sign("msg_1", now, payload);
    const headers = {
      "webhook-id": "msg_1",
      "webhook-timestamp": String(Math.floor(now.getTime() / 1000)),
      "webhook-signature": sig,
    };
    await expect(client().webhooks.verify(payload, headers, secret)).resolves.toEqual(JSON.parse(payload));
    await expect(verifyWebhook(new TextEncoder().encode(payload), new Headers(headers), secret)).resolves.toMatchObject(
      { type: "generation.succeeded" },
    );
    const ours = await signWebhook(payload, secret, "msg_2");
    expect(official.verify(payload, ours)).toEqual(JSON.parse(payload));
  });

  it("refuses a stale timestamp, a wrong signature, a changed body and missing headers", async () => {
    const stale = new Date(Date.now() - 6 * 60_000);
    const headers = {
      "webhook-id": "msg_1",
      "webhook-timestamp": String(Math.floor(stale.getTime() / 1000)),
      "webhook-signature": official.sign("msg_1", stale, payload),
    };
    await expect(verifyWebhook(payload, headers, secret)).rejects.toThrow(/5 minutes/);
    const fresh = await signWebhook(payload, secret, "msg_1");
    const wrong = await signWebhook(payload, `whsec_${Buffer.from("another secret").toString("base64")}`, "msg_1");
    await expect(verifyWebhook(payload, wrong, secret)).rejects.toBeInstanceOf(WebhookVerificationError);
    await expect(verifyWebhook(`${payload} `, fresh, secret)).rejects.toThrow(/no webhook signature/);
    await expect(verifyWebhook(payload, { ...fresh, "webhook-id": "msg_2" }, secret)).rejects.toThrow(
      /no webhook signature/,
    );
    await expect(verifyWebhook(payload, { "webhook-id": "msg_1" }, secret)).rejects.toThrow(/webhook-timestamp/);
  });

  it("accepts a delivery signed with several secrets while one rotates", async () => {
    const old = `whsec_${Buffer.from("the old secret").toString("base64")}`;
    const a = await signWebhook(payload, old, "msg_9");
    const b = await signWebhook(payload, secret, "msg_9");
    const both = { ...a, "webhook-signature": `${a["webhook-signature"]} v2,junk ${b["webhook-signature"]}` };
    await expect(verifyWebhook(payload, both, secret)).resolves.toBeTruthy();
    await expect(verifyWebhook(payload, both, old)).resolves.toBeTruthy();
    await expect(
      verifyWebhook(payload, both, `whsec_${Buffer.from("neither").toString("base64")}`),
    ).rejects.toBeInstanceOf(WebhookVerificationError);
  });
});

describe("errors, timeouts and request ids", () => {
  it("puts the request id on every answer and every error", async () => {
    routes.set("GET /v1/models/m1", (_req, res) => json(res, 200, { id: "m1", object: "model" }, "req_model0001"));
    const model = await client().models.get("m1");
    expect(model._request_id).toBe("req_model0001");
    expect(JSON.parse(JSON.stringify(model))).toEqual({ id: "m1", object: "model" });
    routes.set("GET /v1/models/m2", (_req, res) => res.writeHead(500, { "x-request-id": "req_boom0001" }).end("oops"));
    const err = await client()
      .models.get("m2")
      .catch((e) => e);
    expect(err.requestId).toBe("req_boom0001");
  });

  it("tells a timeout (client-level, on every call) from an abort", async () => {
    const late: Handler = (_req, res) => setTimeout(() => json(res, 200, { object: "list", data: [] }), 1_000);
    routes.set("GET /v1/models", late);
    routes.set("POST /v1/generations", late);
    const slow = client({ timeout: 200 });
    await expect(slow.models.list()).rejects.toBeInstanceOf(APITimeoutError);
    const t = Date.now();
    await expect(slow.generations.create({ prompt: "x" })).rejects.toBeInstanceOf(APITimeoutError);
    expect(Date.now() - t).toBeLessThan(2_000);
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 100);
    const aborted = await client()
      .models.list({ signal: controller.signal })
      .catch((e) => e);
    expect(aborted).toBeInstanceOf(APIUserAbortError);
    expect(aborted).not.toBeInstanceOf(APITimeoutError);
  });

  it("names a wrong base URL or a wrong key in a typed error", async () => {
    const nowhere = await client({ baseURL: "http://127.0.0.1:9" })
      .models.list()
      .catch((e) => e);
    expect(nowhere).toBeInstanceOf(APIConnectionError);
    expect(nowhere.message).toContain("http://127.0.0.1:9");
    const notTheApi = await client({ baseURL: `${base}/elsewhere` })
      .keys.list()
      .catch((e) => e);
    expect(notTheApi).toBeInstanceOf(NotFoundError);
    expect(notTheApi.message).toMatch(/base URL/);
    routes.set("GET /v1/keys", (_req, res) =>
      json(res, 401, {
        error: {
          type: "authentication_error",
          code: "invalid_api_key",
          message: "Invalid API key.",
          request_id: "req_401401401",
        },
      }),
    );
    const badKey = await client()
      .keys.list()
      .catch((e) => e);
    expect(badKey).toBeInstanceOf(AuthenticationError);
    expect(badKey.message).toMatch(/API key/);
  });
});

describe("pagination", () => {
  it("awaits to the first page and iterates every item across pages", async () => {
    const afters: Array<string | null> = [];
    routes.set("GET /v1/generations", (req, res) => {
      const after = new URL(req.url!, base).searchParams.get("after");
      afters.push(after);
      const pages: Record<string, { data: Array<{ id: string }>; next_cursor: string | null }> = {
        "": { data: [{ id: "g5" }, { id: "g4" }], next_cursor: "g4" },
        g4: { data: [{ id: "g3" }, { id: "g2" }], next_cursor: "g2" },
        g2: { data: [{ id: "g1" }], next_cursor: null },
      };
      json(res, 200, { object: "list", has_more: false, ...pages[after ?? ""] });
    });
    const page = await client().generations.list({ limit: 2 });
    expect(page.data.map((g) => g.id)).toEqual(["g5", "g4"]);
    expect(page._request_id).toBe("req_abc12345");
    const ids: string[] = [];
    for await (const g of client().generations.list({ limit: 2 })) ids.push(g.id);
    expect(ids).toEqual(["g5", "g4", "g3", "g2", "g1"]);
    expect(afters).toEqual([null, null, "g4", "g2"]);
    routes.set("GET /v1/addons", (_req, res) => json(res, 200, { object: "list", data: [{ id: "a1" }, { id: "a2" }] }));
    const addons: string[] = [];
    for await (const a of client().addons.list()) addons.push(a.id);
    expect(addons).toEqual(["a1", "a2"]);
  });
});

describe("addons.upload", () => {
  it("reports progress and sends the PUT through the custom fetch", async () => {
    const file = new Uint8Array(200_000).map((_, i) => i % 251);
    let stored: Buffer | undefined;
    let contentLength: string | undefined;
    routes.set("POST /v1/addons", (_req, res, body) => {
      const asked = JSON.parse(body.toString());
      expect(asked.size_bytes).toBe(file.byteLength);
      json(res, 201, {
        addon: { id: "addon_1", latest_version: 1 },
        version: { version: 1 },
        upload: {
          url: `${base}/storage/addon_1`,
          method: "PUT",
          headers: { "content-type": "application/octet-stream" },
        },
      });
    });
    routes.set("PUT /storage/addon_1", (req, res, body) => {
      stored = body;
      contentLength = req.headers["content-length"];
      res.writeHead(200).end();
    });
    routes.set("POST /v1/addons/addon_1/versions/1/finalize", (_req, res) =>
      json(res, 200, { version: 1, status: "ready" }),
    );
    const fetched: string[] = [];
    const customFetch: typeof fetch = (input, init) => {
      fetched.push(`${init?.method ?? "GET"} ${new URL(String(input)).pathname}`);
      return fetch(input, init);
    };
    const progress: number[] = [];
    const { version } = await client({ fetch: customFetch }).addons.upload(
      file,
      { kind: "lora", name: "x", family: "tiny-shapes" },
      { onProgress: (p) => progress.push(p.loaded) },
    );
    expect(version.status).toBe("ready");
    expect(fetched).toEqual(["POST /v1/addons", "PUT /storage/addon_1", "POST /v1/addons/addon_1/versions/1/finalize"]);
    expect(Buffer.compare(stored!, Buffer.from(file))).toBe(0);
    expect(contentLength).toBe(String(file.byteLength));
    expect(progress.length).toBeGreaterThan(3);
    expect(progress.at(-1)).toBe(file.byteLength);
    expect(progress).toEqual([...progress].sort((a, b) => a - b));
  });
});
