import { env } from "cloudflare:workers";
import { beforeAll, describe, expect, it } from "vitest";
import { Webhook } from "standardwebhooks";
import { database } from "@imagegen/db";
import { refusedDestination } from "../src/webhooks/destination.ts";
import { sealPlainSecrets } from "../src/webhooks/keys.ts";
import { signatureHeaders } from "../src/webhooks/signature.ts";
import { call, completeLeased, generate, lease, newRunner, newTenant, registerModel } from "./helpers.ts";

beforeAll(async () => {
  await registerModel();
});

/** vitest.config.ts answers http://hooks.test/<name> as a receiver would (backoff there: 50, 100, 150 ms). */
let receivers = 0;
function receiver(failFirst = 0) {
  const name = `r${++receivers}-${crypto.randomUUID().slice(0, 8)}`;
  return {
    url: `http://hooks.test/${name}${failFirst ? `?fail=${failFirst}` : ""}`,
    received: async () =>
      (await (await fetch(`http://hooks.test/${name}`)).json()) as Array<{
        headers: Record<string, string>;
        body: string;
        at: number;
      }>,
  };
}

async function deliveries(key: string, query = "") {
  return (await call("GET", `/v1/webhooks/deliveries${query}`, { token: key })).body.data as any[];
}
async function until<T>(probe: () => Promise<T | undefined | false>): Promise<T> {
  for (let i = 0; i < 250; i++) {
    const v = await probe();
    if (v) return v;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error("timed out");
}
async function succeed(key: string, body: Record<string, unknown>) {
  const runner = await newRunner();
  const job = await generate(key, body);
  expect(job.status).toBe(202);
  // Earlier tests may have left jobs queued: finish whatever comes first until this one is done.
  for (let i = 0; i < 5; i++) {
    const l = await lease(runner.token);
    expect(l.status).toBe(200);
    await completeLeased(runner.token, l.body);
    if (l.body.job.id === job.body.id) return job.body;
  }
  throw new Error("the job was never leased");
}

describe("webhook deliveries", () => {
  it("are signed per Standard Webhooks: the official verifier accepts them; a stale timestamp or wrong signature fails", async () => {
    const t = await newTenant("hooks-sign");
    const r = receiver();
    const secret = (await call("GET", "/v1/webhooks/secret", { token: t.key })).body.secret as string;
    expect(secret).toMatch(/^whsec_[A-Za-z0-9+/]{43}=$/);
    const job = await succeed(t.key, { webhook_url: r.url });
    const [hit] = await until(async () => (await r.received()).length === 1 && r.received());
    const payload = new Webhook(secret).verify(hit!.body, hit!.headers) as any;
    expect(payload).toMatchObject({ type: "generation.succeeded", data: { id: job.id, status: "succeeded" } });
    expect(hit!.headers["webhook-id"]).toBe(payload.id);
    expect(hit!.headers["webhook-signature"]).toMatch(/^v1,[A-Za-z0-9+/]{43}=$/);

    const stale = await signatureHeaders([secret], payload.id, Math.floor(Date.now() / 1000) - 600, hit!.body);
    expect(() => new Webhook(secret).verify(hit!.body, stale)).toThrow(/too old/);
    const other = (await call("GET", "/v1/webhooks/secret", { token: (await newTenant("hooks-sign-2")).key })).body
      .secret;
    expect(() => new Webhook(other).verify(hit!.body, hit!.headers)).toThrow(/No matching signature/);
    expect(() => new Webhook(secret).verify(hit!.body.replace("succeeded", "failed"), hit!.headers)).toThrow(
      /No matching signature/,
    );
    const d = (await deliveries(t.key))[0];
    expect(d).toMatchObject({
      id: payload.id,
      status: "delivered",
      attempts: 1,
      endpoint_id: null,
      generation_id: job.id,
      url: r.url,
    });
  });

  it("failures are retried by the delivery's own timer (no cron), with growing waits, then given up", async () => {
    const t = await newTenant("hooks-retry");
    const flaky = receiver(2);
    const down = receiver(99);
    await succeed(t.key, { webhook_url: flaky.url, seed: 1 });
    await succeed(t.key, { webhook_url: down.url, seed: 2 });
    const ended = await until(async () => {
      const ds = await deliveries(t.key);
      return ds.length === 2 && ds.every((d) => d.status !== "pending") && ds;
    });
    const byUrl = Object.fromEntries(ended.map((d) => [d.url, d]));
    expect(byUrl[flaky.url]).toMatchObject({
      status: "delivered",
      attempts: 3,
      last_response_status: 204,
      last_error: null,
      next_attempt_at: null,
    });
    expect(byUrl[down.url]).toMatchObject({
      status: "failed",
      attempts: 4,
      last_response_status: 500,
      next_attempt_at: null,
    });
    const hits = await down.received();
    expect(hits).toHaveLength(4);
    // The same webhook-id on every attempt, so receivers can drop duplicates.
    expect(new Set(hits.map((h) => h.headers["webhook-id"]))).toEqual(new Set([byUrl[down.url].id]));
    const waits = hits.slice(1).map((h, i) => h.at - hits[i]!.at);
    expect(waits[0]).toBeGreaterThanOrEqual(35); // 50 ms −20%, then 100, 150
    expect(waits[2]).toBeGreaterThanOrEqual(115);

    const again = await call("POST", `/v1/webhooks/deliveries/${byUrl[down.url].id}/redeliver`, { token: t.key });
    expect(again.body).toMatchObject({ status: "failed", attempts: 5 });
    const other = await newTenant("hooks-retry-other");
    expect(
      (await call("POST", `/v1/webhooks/deliveries/${byUrl[down.url].id}/redeliver`, { token: other.key })).status,
    ).toBe(404);
    expect(await deliveries(other.key)).toEqual([]);
  });

  it("cancel and failure notify too; jobs without a webhook_url record nothing", async () => {
    const t = await newTenant("hooks-2");
    const r = receiver();
    const runner = await newRunner();
    const canceled = await generate(t.key, { webhook_url: r.url, seed: 1 });
    await call("POST", `/v1/generations/${canceled.body.id}/cancel`, { token: t.key });
    const failing = await generate(t.key, { webhook_url: r.url, seed: 2 });
    const l = await lease(runner.token);
    expect(l.body.job.id).toBe(failing.body.id);
    await call("POST", `/internal/v1/jobs/${failing.body.id}/fail`, {
      token: runner.token,
      body: { lease_id: l.body.lease_id, error: { code: "bad", message: "no" } },
    });
    const quiet = await generate(t.key, { seed: 3 });
    const events = await until(async () => {
      const d = await deliveries(t.key);
      return d.length === 2 && d;
    });
    expect(events.map((d) => `${d.generation_id}:${d.event}`).sort()).toEqual(
      [`${canceled.body.id}:generation.canceled`, `${failing.body.id}:generation.failed`].sort(),
    );
    const ended = await call("POST", `/v1/generations/${quiet.body.id}/cancel`, { token: t.key });
    expect(ended.body.status).toBe("canceled");
    expect(await deliveries(t.key)).toHaveLength(2);
  });
});

describe("webhook endpoints", () => {
  it("are registered, listed, changed and deleted, per tenant; each gets the events it subscribed to", async () => {
    const t = await newTenant("endpoints");
    const all = receiver();
    const failedOnly = receiver();
    const created = await call("POST", "/v1/webhooks/endpoints", { token: t.key, body: { url: all.url } });
    expect(created.status).toBe(201);
    expect(created.body).toMatchObject({
      object: "webhook_endpoint",
      url: all.url,
      events: ["generation.succeeded", "generation.failed", "generation.canceled"],
      disabled: false,
    });
    expect(created.body.secret).toMatch(/^whsec_[A-Za-z0-9+/]{43}=$/);
    const second = (
      await call("POST", "/v1/webhooks/endpoints", {
        token: t.key,
        body: { url: failedOnly.url, events: ["generation.failed"] },
      })
    ).body;
    expect(second.secret).not.toBe(created.body.secret);

    const job = await succeed(t.key, {});
    const [hit] = await until(async () => (await all.received()).length === 1 && all.received());
    expect(new Webhook(created.body.secret).verify(hit!.body, hit!.headers)).toMatchObject({
      type: "generation.succeeded",
      data: { id: job.id },
    });
    expect(() => new Webhook(second.secret).verify(hit!.body, hit!.headers)).toThrow();
    expect(await failedOnly.received()).toEqual([]);
    expect(await deliveries(t.key, `?endpoint_id=${created.body.id}`)).toMatchObject([
      { endpoint_id: created.body.id, status: "delivered" },
    ]);
    expect(await deliveries(t.key, `?endpoint_id=${second.id}`)).toEqual([]);

    const list = await call("GET", "/v1/webhooks/endpoints", { token: t.key });
    expect(list.body.data.map((e: any) => e.id)).toEqual([created.body.id, second.id]);
    expect(list.body.data[0].secret).toBeUndefined();
    const patched = await call("PATCH", `/v1/webhooks/endpoints/${created.body.id}`, {
      token: t.key,
      body: { events: ["generation.canceled"], disabled: true },
    });
    expect(patched.body).toMatchObject({ events: ["generation.canceled"], disabled: true });
    expect((await call("GET", `/v1/webhooks/endpoints/${created.body.id}`, { token: t.key })).body).toEqual(
      patched.body,
    );
    expect(
      (
        await call("PATCH", `/v1/webhooks/endpoints/${created.body.id}`, {
          token: t.key,
          body: { events: ["generation.started"] },
        })
      ).status,
    ).toBe(400);

    const other = await newTenant("endpoints-other");
    expect((await call("GET", `/v1/webhooks/endpoints/${created.body.id}`, { token: other.key })).status).toBe(404);
    expect((await call("DELETE", `/v1/webhooks/endpoints/${created.body.id}`, { token: other.key })).status).toBe(404);
    expect((await call("GET", "/v1/webhooks/endpoints", { token: other.key })).body.data).toEqual([]);
    expect((await call("DELETE", `/v1/webhooks/endpoints/${created.body.id}`, { token: t.key })).status).toBe(204);
    expect((await call("GET", `/v1/webhooks/endpoints/${created.body.id}`, { token: t.key })).status).toBe(404);
    expect((await call("GET", "/v1/webhooks/endpoints", { token: t.key })).body.data.map((e: any) => e.id)).toEqual([
      second.id,
    ]);
  });

  it("rotate their secret: both secrets sign during the grace period, only the new one after", async () => {
    const t = await newTenant("rotate");
    const r = receiver();
    const created = (await call("POST", "/v1/webhooks/endpoints", { token: t.key, body: { url: r.url } })).body;
    const before = Date.now();
    const rotated = await call("POST", `/v1/webhooks/endpoints/${created.id}/secret/rotate`, { token: t.key });
    expect(rotated.status).toBe(200);
    expect(rotated.body.secret).not.toBe(created.secret);
    expect(Date.parse(rotated.body.previous_secret_expires_at) - before).toBeGreaterThanOrEqual(86_400_000 - 1000);
    expect((await call("GET", `/v1/webhooks/endpoints/${created.id}/secret`, { token: t.key })).body).toEqual(
      rotated.body,
    );

    await succeed(t.key, { seed: 1 });
    const [during] = await until(async () => (await r.received()).length === 1 && r.received());
    expect(during!.headers["webhook-signature"]!.split(" ")).toHaveLength(2);
    for (const secret of [created.secret, rotated.body.secret])
      expect(new Webhook(secret).verify(during!.body, during!.headers)).toMatchObject({ type: "generation.succeeded" });

    const now = (
      await call("POST", `/v1/webhooks/endpoints/${created.id}/secret/rotate`, {
        token: t.key,
        body: { previous_secret_expires_in: 0 },
      })
    ).body;
    expect(now.previous_secret_expires_at).toBeNull();
    await succeed(t.key, { seed: 2 });
    const [, after] = await until(async () => (await r.received()).length === 2 && r.received());
    expect(after!.headers["webhook-signature"]!.split(" ")).toHaveLength(1);
    expect(new Webhook(now.secret).verify(after!.body, after!.headers)).toMatchObject({ type: "generation.succeeded" });
    for (const old of [created.secret, rotated.body.secret])
      expect(() => new Webhook(old).verify(after!.body, after!.headers)).toThrow(/No matching signature/);
  });

  it("the tenant's own secret (for webhook_url) is its own and rotates the same way", async () => {
    const a = await newTenant("secret-a");
    const b = await newTenant("secret-b");
    const sa = (await call("GET", "/v1/webhooks/secret", { token: a.key })).body.secret;
    expect(sa).toMatch(/^whsec_/);
    expect((await call("GET", "/v1/webhooks/secret", { token: a.key })).body.secret).toBe(sa);
    expect((await call("GET", "/v1/webhooks/secret", { token: b.key })).body.secret).not.toBe(sa);
    const rotated = (await call("POST", "/v1/webhooks/secret/rotate", { token: a.key })).body;
    expect(rotated.secret).not.toBe(sa);
    expect(rotated.previous_secret_expires_at).not.toBeNull();
    expect((await call("GET", "/v1/webhooks/secret", { token: a.key })).body.secret).toBe(rotated.secret);
  });

  it("need keys:write", async () => {
    const t = await newTenant("endpoints-scope", {}, ["generations:read", "generations:write"]);
    expect(
      (await call("POST", "/v1/webhooks/endpoints", { token: t.key, body: { url: "https://example.com/h" } })).status,
    ).toBe(403);
    expect((await call("GET", "/v1/webhooks/secret", { token: t.key })).status).toBe(403);
  });
});

describe("webhook destinations (SSRF)", () => {
  const hostile = [
    "http://127.0.0.1/h",
    "http://127.1/h",
    "http://0x7f000001/h",
    "http://2130706433/h",
    "http://017700000001/h",
    "http://0.0.0.0/h",
    "http://10.1.2.3/h",
    "http://172.16.0.1/h",
    "http://172.31.255.255/h",
    "http://192.168.1.1:8080/h",
    "http://169.254.169.254/latest/meta-data/",
    "http://100.64.0.1/h",
    "http://224.0.0.1/h",
    "http://[::1]/h",
    "http://[::]/h",
    "http://[::ffff:127.0.0.1]/h",
    "http://[::ffff:a9fe:a9fe]/h",
    "http://[0:0:0:0:0:ffff:10.0.0.1]/h",
    "http://[fe80::1]/h",
    "http://[fc00::1]/h",
    "http://[fd12:3456::1]/h",
    "http://[64:ff9b::10.0.0.1]/h",
    "http://[2002:c0a8:101::1]/h",
    "http://localhost/h",
    "http://LOCALHOST./h",
    "http://api.localhost/h",
    "http://printer.local/h",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://intranet/h",
    "ftp://example.com/h",
  ];
  const fine = [
    "https://example.com/hook",
    "http://93.184.216.34/h",
    "http://172.32.0.1/h",
    "http://[2606:4700:4700::1111]/h",
    "https://hooks.example.co.uk:8443/x?y=1",
  ];

  it("refuses private, loopback, link-local and internal hosts in every spelling", () => {
    for (const url of hostile) expect(refusedDestination(url, false), url).toBeTruthy();
    for (const url of fine) expect(refusedDestination(url, false), url).toBeUndefined();
    // The deployment may allow them (the local stack does), still http(s) only.
    for (const url of hostile.slice(0, -1)) expect(refusedDestination(url, true), url).toBeUndefined();
    expect(refusedDestination("ftp://example.com/h", true)).toBeTruthy();
  });

  it("the API refuses them as endpoints and as a request's webhook_url", async () => {
    const t = await newTenant("ssrf");
    for (const url of hostile.slice(0, 8)) {
      const ep = await call("POST", "/v1/webhooks/endpoints", { token: t.key, body: { url } });
      expect(ep.status, url).toBe(400);
      expect(ep.body.error.param).toBe("url");
      const g = await generate(t.key, { webhook_url: url });
      expect(g.status, url).toBe(400);
      expect(g.body.error.param).toBe("webhook_url");
    }
    const ok = (
      await call("POST", "/v1/webhooks/endpoints", { token: t.key, body: { url: "https://example.com/hook" } })
    ).body;
    const moved = await call("PATCH", `/v1/webhooks/endpoints/${ok.id}`, {
      token: t.key,
      body: { url: "http://[::1]/h" },
    });
    expect(moved.status).toBe(400);
    expect(moved.body.error.code).toBe("webhook_url_refused");
    expect((await call("GET", "/v1/webhooks/endpoints", { token: t.key })).body.data).toHaveLength(1);
  });
});

describe("webhook secrets at rest", () => {
  it("are sealed in D1, never the secret the API shows", async () => {
    const t = await newTenant("sealed");
    const secret = (await call("GET", "/v1/webhooks/secret", { token: t.key })).body.secret as string;
    const ep = (
      await call("POST", "/v1/webhooks/endpoints", { token: t.key, body: { url: "https://example.com/hook" } })
    ).body;
    const tenantRow = await env.DB.prepare("SELECT webhook_secret AS s FROM tenants WHERE id = ?")
      .bind(t.id)
      .first<{ s: string }>();
    const endpointRow = await env.DB.prepare("SELECT secret AS s FROM webhook_endpoints WHERE id = ?")
      .bind(ep.id)
      .first<{ s: string }>();
    for (const [stored, plain] of [
      [tenantRow!.s, secret],
      [endpointRow!.s, ep.secret],
    ] as const) {
      expect(stored).toMatch(/^enc1:/);
      expect(stored).not.toContain(plain.slice(6));
      expect(stored).not.toContain(atob(plain.slice(6)));
    }
    // Bound to its row: a sealed secret copied onto another tenant does not open there.
    const other = await newTenant("sealed-other");
    await env.DB.prepare("UPDATE tenants SET webhook_secret = ? WHERE id = ?").bind(tenantRow!.s, other.id).run();
    expect((await call("GET", "/v1/webhooks/secret", { token: other.key })).status).toBe(500);
  });

  it("written in plain text before sealing are read as the same key and sealed, on first use or by the cron", async () => {
    const t = await newTenant("legacy");
    const bytes = Uint8Array.from({ length: 32 }, (_, i) => 250 - i); // base64url of these has '-' and '_'
    const b64 = btoa(String.fromCharCode(...bytes));
    const legacy = `whsec_${b64.replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "")}`;
    await env.DB.prepare("UPDATE tenants SET webhook_secret = ? WHERE id = ?").bind(legacy, t.id).run();
    expect((await call("GET", "/v1/webhooks/secret", { token: t.key })).body.secret).toBe(`whsec_${b64}`);
    expect(
      (await env.DB.prepare("SELECT webhook_secret AS s FROM tenants WHERE id = ?").bind(t.id).first<{ s: string }>())!
        .s,
    ).toMatch(/^enc1:/);

    const ep = (
      await call("POST", "/v1/webhooks/endpoints", { token: t.key, body: { url: "https://example.com/hook" } })
    ).body;
    await env.DB.prepare("UPDATE webhook_endpoints SET secret = ? WHERE id = ?").bind(legacy, ep.id).run();
    expect(await sealPlainSecrets(env, database(env.DB))).toBeGreaterThanOrEqual(1);
    expect(
      (await env.DB.prepare("SELECT secret AS s FROM webhook_endpoints WHERE id = ?")
        .bind(ep.id)
        .first<{ s: string }>())!.s,
    ).toMatch(/^enc1:/);
    expect((await call("GET", `/v1/webhooks/endpoints/${ep.id}/secret`, { token: t.key })).body.secret).toBe(
      `whsec_${b64}`,
    );
  });
});
