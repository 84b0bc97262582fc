import { env } from "cloudflare:workers";
import { beforeAll, describe, expect, it } from "vitest";
import { ADMIN, call, generate, newRunner, newTenant, registerModel } from "./helpers.ts";

let key: string;
let tenantId: string;

async function jobCount(): Promise<number> {
  const row = await env.DB.prepare("SELECT count(*) AS n FROM jobs").first<{ n: number }>();
  return row!.n;
}

function expectEnvelope(body: any, type: string, code?: string) {
  expect(body.error.type).toBe(type);
  if (code) expect(body.error.code).toBe(code);
  expect(typeof body.error.message).toBe("string");
  expect(body.error.message.length).toBeGreaterThan(5);
  expect(body.error.request_id).toMatch(/^req_/);
}

beforeAll(async () => {
  await registerModel();
  ({ key, id: tenantId } = await newTenant("errors"));
});

describe("bad input gets one error envelope and changes nothing", () => {
  it("malformed JSON → 400 invalid_json", async () => {
    const r = await call("POST", "/v1/generations", {
      token: key,
      raw: '{"prompt": "x",',
      headers: { "content-type": "application/json" },
    });
    expect(r.status).toBe(400);
    expectEnvelope(r.body, "invalid_request_error", "invalid_json");
    expect(r.headers.get("x-request-id")).toBe(r.body.error.request_id);
  });

  it("a JSON array or a wrong content type is refused", async () => {
    const arr = await call("POST", "/v1/generations", {
      token: key,
      raw: "[1,2]",
      headers: { "content-type": "application/json" },
    });
    expect(arr.status).toBe(400);
    const form = await call("POST", "/v1/generations", {
      token: key,
      raw: "prompt=x",
      headers: { "content-type": "application/x-www-form-urlencoded" },
    });
    expect(form.status).toBe(415);
    expectEnvelope(form.body, "invalid_request_error", "unsupported_media_type");
  });

  it("oversized bodies → 413", async () => {
    const r = await generate(key, {
      metadata: { a: "x".repeat(500) },
      negative_prompt: "y".repeat(900),
      padding: "z".repeat(3 * 1024 * 1024),
    });
    expect(r.status).toBe(413);
    expectEnvelope(r.body, "invalid_request_error", "body_too_large");
  });

  it("unknown fields, wrong types, huge prompts and absurd sizes name the parameter", async () => {
    const cases: Array<[Record<string, unknown>, string, string?]> = [
      [{ colour: "red" }, "", "unknown_parameter"],
      [{ n: "two" }, "n"],
      [{ prompt: "p".repeat(1001) }, "prompt"],
      [{ prompt: "" }, "prompt"],
      [{ width: -64 }, "width"],
      [{ width: 1_000_000 }, "width"],
      [{ width: 96 }, "width", "invalid_size"],
      [{ height: 128 }, "height", "invalid_size"],
      [{ steps: 0 }, "steps"],
      [{ steps: 30, sampler: "lcm" }, "steps", "invalid_steps"],
      [{ sampler: "rectified-flow" }, "sampler", "unsupported_sampler"],
      [{ sampler: "euler-ancestral" }, "sampler"],
      [{ guidance: 999 }, "guidance"],
      [{ seed: -1 }, "seed"],
      [{ seed: 2 ** 40 }, "seed"],
      [{ n: 9 }, "n"],
      [{ loras: [{ id: "not an id" }] }, "loras[0].id"],
      [{ cache: { mode: "deepcache", interval: 1 } }, "cache.interval"],
      [{ webhook_url: "ftp://example.com/x" }, "webhook_url"],
      [{ model: "no-such-model" }, "model", "resource_not_found"],
    ];
    const before = await jobCount();
    for (const [patch, param, code] of cases) {
      const r = await generate(key, patch);
      expect([400, 404], `${JSON.stringify(patch)} → ${r.status} ${JSON.stringify(r.body)}`).toContain(r.status);
      expectEnvelope(r.body, r.status === 404 ? "not_found_error" : "invalid_request_error", code);
      if (param) expect(r.body.error.param, JSON.stringify(patch)).toBe(param);
      else expect(r.body.error.message).toContain("colour");
    }
    expect(await jobCount()).toBe(before);
  });

  it("unknown add-on ids → 404 naming the parameter", async () => {
    const r = await generate(key, { loras: [{ id: "addon_doesnotexist", scale: 1 }] });
    expect(r.status).toBe(404);
    expectEnvelope(r.body, "not_found_error", "addon_not_found");
    expect(r.body.error.param).toBe("loras[0].id");
  });

  it("unknown routes → 404 envelope; every answer has a request id", async () => {
    const r = await call("GET", "/v1/nope", { token: key });
    expect(r.status).toBe(404);
    expectEnvelope(r.body, "not_found_error", "route_not_found");
    const h = await call("GET", "/healthz");
    expect(h.headers.get("x-request-id")).toMatch(/^req_/);
    const own = await call("GET", "/healthz", { headers: { "x-request-id": "client-chosen-123" } });
    expect(own.headers.get("x-request-id")).toBe("client-chosen-123");
  });
});

describe("credentials", () => {
  it("missing, forged and revoked keys → 401", async () => {
    const missing = await call("GET", "/v1/generations");
    expect(missing.status).toBe(401);
    expectEnvelope(missing.body, "authentication_error");
    const forged = await call("GET", "/v1/generations", { token: "igk_" + "A".repeat(43) });
    expect(forged.status).toBe(401);
    const other = await newTenant("to-revoke");
    const list = await call("GET", "/v1/keys", { token: other.key });
    expect(list.status).toBe(200);
    const revoke = await call("DELETE", `/v1/keys/${other.keyId}`, { token: other.key });
    expect(revoke.status).toBe(200);
    expect(revoke.body.revoked_at).not.toBeNull();
    const after = await call("GET", "/v1/generations", { token: other.key });
    expect(after.status).toBe(401);
    expect(after.body.error.code).toBe("api_key_revoked");
  });

  it("keys are stored hashed, with a display prefix only", async () => {
    const t = await newTenant("hash-check");
    const row = await env.DB.prepare("SELECT hash, prefix FROM api_keys WHERE id = ?")
      .bind(t.keyId)
      .first<{ hash: string; prefix: string }>();
    expect(row!.hash).toMatch(/^[0-9a-f]{64}$/);
    expect(row!.hash).not.toContain(t.key);
    expect(t.key.startsWith(row!.prefix.replace("…", ""))).toBe(true);
    expect(row!.prefix.length).toBeLessThan(t.key.length / 2);
  });

  it("runner tokens cannot call the public API, and tenant keys cannot call the runner API", async () => {
    const runner = await newRunner();
    const a = await call("GET", "/v1/generations", { token: runner.token });
    expect(a.status).toBe(401);
    expect(a.body.error.message).toMatch(/runner token/);
    const b = await call("POST", "/internal/v1/lease", { token: key, body: { models: ["tiny-shapes"], wait_ms: 0 } });
    expect(b.status).toBe(401);
    expect(b.body.error.message).toMatch(/runner tokens/);
    const c = await call("POST", "/admin/v1/tenants", { token: key, body: { name: "x" } });
    expect(c.status).toBe(401);
    const d = await call("POST", "/admin/v1/tenants", { token: ADMIN, body: { name: "ok" } });
    expect(d.status).toBe(201);
  });

  it("a key without a scope is refused with 403", async () => {
    const t = await newTenant("read-only", {}, ["generations:read"]);
    const r = await generate(t.key);
    expect(r.status).toBe(403);
    expectEnvelope(r.body, "permission_error", "missing_scope");
    const l = await call("GET", "/v1/generations", { token: t.key });
    expect(l.status).toBe(200);
  });

  it("administrative actions are audited", async () => {
    const r = await call("GET", `/admin/v1/audit?tenant_id=${tenantId}`, { token: ADMIN });
    expect(r.status).toBe(200);
    const actions = r.body.data.map((e: any) => e.action);
    expect(actions).toContain("tenant.create");
    expect(actions).toContain("api_key.create");
  });
});
