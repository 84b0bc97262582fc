/**
 * The dashboard in Debian's Chromium against the whole local stack: sign-up through an invite, sign-in and sign-out,
 * an add-on uploaded with progress until ready, a generation with it followed live and found in the jobs list, keys,
 * a webhook delivered to a receiver on 127.0.0.1, a member refused admin actions (hidden in the page and refused by
 * the API), another tenant's objects never shown, no sideways scroll at 375 px, the CSP header and no violations.
 * Each page is photographed into tests/.work/screenshots/ (with UPDATE_SCREENSHOTS=1: edge/src/dashboard/screenshots/,
 * which the README shows).
 */
import type { ModelSpec } from "@imagegen/contracts";
import { ImageGen } from "@imagegen/sdk";
import { encodeSafetensors } from "@imagegen/formats/safetensors";
import { mkdirSync, statSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Browser, BrowserContext, Page } from "playwright-core";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  accessibilityViolations,
  DESKTOP,
  launchChromium,
  newContext,
  PHONE,
  type Problems,
  SCREENSHOTS,
  screenshot,
  sidewaysOverflow,
} from "./browser.ts";
import { api, type Stack, spawnRunner, startStack, waitFor } from "./stack.ts";

const OWNER = { email: "owner@example.test", name: "Olive Owner", password: "correct horse battery" };
const MEMBER = { email: "member@example.test", name: "Milo Member", password: "member password 1" };
const PAGES = ["playground", "jobs", "addons", "models", "usage", "keys", "webhooks", "users", "account"];

let stack: Stack;
let browser: Browser;
let owner: BrowserContext;
let page: Page;
let runner: Awaited<ReturnType<typeof spawnRunner>> | undefined;
let receiver: Server;
const received: Array<{ headers: Record<string, unknown>; body: string }> = [];
const problems: Problems = { errors: [], csp: [] };
/** What the tests record inside the page. */
type Seen = { uploadSeen: string[]; genSeen: string[]; injected?: boolean };
// The page's globals, for the callbacks that run inside Chromium (the tests compile without the DOM library).
interface PageNode {
  textContent: string | null;
  value?: number;
  validity?: { tooShort: boolean };
}
declare const document: {
  body: PageNode;
  head: { append(node: PageNode): void };
  activeElement: PageNode | null;
  querySelector(selector: string): PageNode | null;
  createElement(tag: string): PageNode;
};
declare const window: Seen;
declare const MutationObserver: new (callback: () => void) => { observe(target: PageNode, options: object): void };
declare function getComputedStyle(node: PageNode): { outlineStyle: string };
const other = { tenantId: "", key: "", generationId: "", addonName: "other-tenant-style", keyName: "other-tenant-key" };

beforeAll(async () => {
  // The browser first: without Chromium the file fails at once, before minutes of stack start-up.
  browser = await launchChromium();
  stack = await startStack({ runners: 0 });
  receiver = createServer((req, res) => {
    let body = "";
    req.on("data", (d) => (body += d));
    req.on("end", () => {
      received.push({ headers: req.headers, body });
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((r) => receiver.listen(0, "127.0.0.1", r));
  owner = await newContext(browser, problems);
  page = await owner.newPage();
});

// A failed test leaves a picture of the page behind (in the temp folder, not in the repository).
afterEach(async (ctx) => {
  if (ctx.task.result?.state === "fail" && page)
    await page
      .screenshot({ path: join(tmpdir(), `dashboard-failed-${ctx.task.name.slice(0, 40).replace(/\W+/g, "-")}.png`) })
      .catch(() => {});
});

afterAll(async () => {
  await browser?.close();
  runner?.kill("SIGINT");
  receiver?.close();
  await stack?.stop();
});

const admin = (method: string, path: string, body?: unknown) => api(stack, method, path, stack.adminToken, body);

/** An owner invite for a tenant, as an operator bootstraps one (POST /admin/v1/tenants/{id}/invites). */
async function ownerInvite(tenantId: string, email: string): Promise<string> {
  const res = await admin("POST", `/admin/v1/tenants/${tenantId}/invites`, { email, role: "owner" });
  expect(res.status, JSON.stringify(res.body)).toBe(201);
  expect(res.body.url).toContain("/dashboard/signup?invite=");
  return res.body.url;
}

/** A call to the API from inside the page, with its session cookie and (for state changes) its CSRF token. */
async function fromPage(p: Page, method: string, path: string, body?: unknown, csrf = true) {
  return p.evaluate(
    async ({ method, path, body, csrf }) => {
      const session = (await (await fetch("/v1/auth/session")).json()) as { csrf_token?: string };
      const headers: Record<string, string> = { "content-type": "application/json" };
      if (csrf && session.csrf_token) headers["x-csrf-token"] = session.csrf_token;
      const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
      const text = await res.text();
      return { status: res.status, body: text ? JSON.parse(text) : null };
    },
    { method, path, body, csrf },
  );
}

async function go(p: Page, name: string) {
  await p.goto(`${stack.edgeUrl}/dashboard/${name}`);
  await p.waitForSelector(`.page[data-page="${name}"]`);
  // Pages that follow jobs keep a stream open: settle for a quiet moment, not for silence.
  await p.waitForLoadState("networkidle", { timeout: 5_000 }).catch(() => {});
}

function loraFile(spec: ModelSpec, name: string): string {
  const t = spec.lora_targets![0]!;
  const prefix = `lora_unet_${t.module.replace(/\./g, "_")}`;
  const dir = join(tmpdir(), `dashboard-e2e-${process.pid}`);
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${name}.safetensors`);
  writeFileSync(
    file,
    encodeSafetensors({
      [`${prefix}.lora_down.weight`]: {
        shape: [4, t.in_features],
        data: Float32Array.from({ length: 4 * t.in_features }, (_, i) => Math.sin(i) * 0.3),
      },
      [`${prefix}.lora_up.weight`]: {
        shape: [t.out_features, 4],
        data: Float32Array.from({ length: 4 * t.out_features }, (_, i) => Math.cos(i) * 0.3),
      },
    }),
  );
  return file;
}

describe("dashboard, in Chromium", () => {
  it("serves a shell with a strict CSP and every asset from the edge", async () => {
    const res = await fetch(`${stack.edgeUrl}/dashboard/jobs`);
    expect(res.status).toBe(200);
    const csp = res.headers.get("content-security-policy") ?? "";
    expect(csp).toContain("default-src 'none'");
    expect(csp).toContain("script-src 'self'");
    expect(csp).toContain("style-src 'self'");
    expect(csp).toContain("frame-ancestors 'none'");
    expect(csp).not.toContain("unsafe-inline");
    expect(res.headers.get("x-content-type-options")).toBe("nosniff");
    const html = await res.text();
    // No inline script, style or handler; every script and stylesheet from the edge itself.
    expect(html).not.toMatch(/<script(?![^>]*\ssrc=)|<style|\sstyle=|\son[a-z]+=/);
    for (const src of html.matchAll(/(?:src|href)="([^"]+)"/g))
      expect(src[1]).toMatch(/^(\/(dashboard|v1)(\/|$)|data:,$|#main$)/);
    for (const asset of [
      "/dashboard/assets/js/main.js",
      "/dashboard/assets/vendor/uplot.js",
      "/dashboard/assets/app.css",
    ]) {
      const a = await fetch(`${stack.edgeUrl}${asset}`);
      expect(a.status, asset).toBe(200);
      expect(a.headers.get("content-security-policy")).toBe(csp);
    }
    expect((await fetch(`${stack.edgeUrl}/dashboard/assets/../../wrangler.toml`)).status).toBe(404);
  });

  it("signs up through an invite, signs out, refuses a wrong password and signs in with Enter", async () => {
    await page.goto(`${stack.edgeUrl}/dashboard/jobs`);
    // Signed out, nothing of the app shows: only the sign-in form.
    await page.waitForSelector("form[aria-label='Sign in']");
    expect(await page.locator("#nav").isHidden()).toBe(true);
    expect(page.url()).toContain("/dashboard/signin?next=");

    await page.goto(await ownerInvite(stack.tenantId, OWNER.email));
    await page.getByLabel("Your name").fill(OWNER.name);
    await page.getByLabel("Password").fill("short");
    await page.getByRole("button", { name: "Create account" }).click();
    // Native validation keeps a too-short password from being sent.
    expect(await page.getByLabel("Password").evaluate((el) => (el as unknown as PageNode).validity?.tooShort)).toBe(
      true,
    );
    await page.getByLabel("Password").fill(OWNER.password);
    await page.getByRole("button", { name: "Create account" }).click();
    await page.waitForSelector(".page[data-page='playground']");
    expect(await page.locator("#who").textContent()).toContain("owner");
    const cookie = (await owner.cookies()).find((c) => c.name === "ig_session");
    expect(cookie?.httpOnly).toBe(true);
    expect(cookie?.sameSite).toBe("Strict");

    await go(page, "account");
    await screenshot(page, "account");
    await page.click("#signout");
    await page.waitForSelector("form[aria-label='Sign in']");
    expect((await fromPage(page, "GET", "/v1/auth/session")).status).toBe(401);

    await page.getByLabel("Email").fill(OWNER.email);
    await page.getByLabel("Password").fill("not the password");
    await page.getByLabel("Password").press("Enter");
    await page.waitForSelector("[role=alert]:has-text('invalid_credentials')");
    await screenshot(page, "signin");
    await page.getByLabel("Password").fill(OWNER.password);
    await page.getByLabel("Password").press("Enter");
    await page.waitForSelector(".page[data-page='playground']");
    // A state change without the CSRF token is refused even with the cookie.
    const noCsrf = await fromPage(page, "POST", "/v1/keys", { name: "no-csrf" }, false);
    expect(noCsrf.status).toBe(403);
    expect(noCsrf.body.error.code).toBe("csrf_failed");
  });

  it("uploads a LoRA with a progress bar, watches it become ready, and hides a rejected one", async () => {
    const model = (await api(stack, "GET", `/v1/models/${stack.defaultModel}`, stack.apiKey)).body;
    await go(page, "addons");
    // Record every value the progress bar and the status line take.
    await page.evaluate(() => {
      const seen: string[] = [];
      window.uploadSeen = seen;
      new MutationObserver(() => {
        const bar = document.querySelector("#upload-progress");
        seen.push(`${bar?.value ?? ""}|${document.querySelector("#upload-status")?.textContent ?? ""}`);
      }).observe(document.body, { subtree: true, childList: true, characterData: true, attributes: true });
    });
    await page.getByLabel("File").setInputFiles(loraFile(model.spec, "dash-style"));
    expect(await page.getByLabel("Name").inputValue()).toBe("dash-style");
    await page.getByLabel("Model family").first().selectOption(model.family);
    await page.getByRole("button", { name: "Upload" }).click();
    await page.waitForSelector("#upload-status:has-text('dash-style v1: ready')", { timeout: 60_000 });
    const seen: string[] = await page.evaluate(() => window.uploadSeen);
    expect(seen.some((s) => s.includes("Uploading:"))).toBe(true);
    expect(seen.some((s) => s.includes("validating"))).toBe(true);
    expect(await page.locator("#upload-progress").evaluate((el) => (el as unknown as PageNode).value)).toBe(100);
    await page.waitForSelector("tr[data-addon='dash-style'] .version-state .badge-ready");

    // A file that is not a LoRA for this family is rejected with its reason, and never offered in the playground.
    const bad = join(tmpdir(), `dashboard-e2e-${process.pid}`, "not-a-lora.safetensors");
    writeFileSync(bad, encodeSafetensors({ "unrelated.weight": { shape: [4], data: new Float32Array(4) } }));
    await page.getByLabel("File").setInputFiles(bad);
    await page.getByRole("button", { name: "Upload" }).click();
    await page.waitForSelector("#upload-status:has-text('not-a-lora v1: rejected')", { timeout: 60_000 });
    await page.waitForSelector("tr[data-addon='not-a-lora'] .badge-rejected");
    expect(await page.locator("tr[data-addon='not-a-lora'] .error").first().textContent()).toBeTruthy();

    // Filters: by kind and family.
    await page.getByLabel("Kind", { exact: true }).selectOption("controlnet");
    expect(await page.locator("tr[data-addon='dash-style']").count()).toBe(0);
    await page.getByLabel("Kind", { exact: true }).selectOption("");
    expect(await page.locator("tr[data-addon='dash-style']").count()).toBe(1);
    await screenshot(page, "addons");

    await go(page, "playground");
    await page.getByLabel("Model", { exact: true }).selectOption(stack.defaultModel);
    expect(await page.locator(".pick[data-addon='dash-style']").count()).toBe(1);
    expect(await page.locator(".pick[data-addon='not-a-lora']").count()).toBe(0);
  });

  it("generates with the LoRA in the playground, following queue position and steps live, and finds it in the jobs list", async () => {
    await go(page, "playground");
    await page.getByLabel("Model", { exact: true }).selectOption(stack.defaultModel);
    const model = (await api(stack, "GET", `/v1/models/${stack.defaultModel}`, stack.apiKey)).body;
    const sampler = model.spec.default_sampler;
    const steps = Math.min(model.spec.samplers[sampler].max_steps, 250);
    await page.getByLabel("Steps").fill(String(steps));
    await page.getByLabel("Seed").fill("7");
    await page.locator(".pick[data-addon='dash-style'] input[type=checkbox]").check();
    await page.locator(".pick[data-addon='dash-style'] input[type=range]").fill("0.75");
    // The snippets show the exact request.
    const curl = await page.locator("#curl-snippet").textContent();
    expect(curl).toContain(`${stack.edgeUrl}/v1/generations`);
    const sent = JSON.parse(curl!.slice(curl!.indexOf("-d '") + 4, curl!.lastIndexOf("'")));
    expect(sent).toMatchObject({ model: stack.defaultModel, seed: 7, steps, loras: [{ scale: 0.75 }] });
    expect(await page.locator("#sdk-snippet").textContent()).toContain("generations.createAndWait");

    await page.evaluate(() => {
      const seen: string[] = [];
      window.genSeen = seen;
      new MutationObserver(() => seen.push(document.querySelector("#gen-status")?.textContent ?? "")).observe(
        document.querySelector("#result")!,
        { subtree: true, childList: true, characterData: true },
      );
    });
    await page.click("#generate");
    // No runner yet: the job waits, and the page says where it stands.
    await page.waitForSelector("#gen-status:has-text('position 1 in your queue')");
    await screenshot(page, "playground");
    runner = await spawnRunner(stack, "dashboard-runner", {
      args: ["--heartbeat-ms", "100", "--only", stack.defaultModel],
    });
    await page.waitForSelector("#gen-status:has-text('succeeded')", { timeout: 90_000 });
    const seen: string[] = await page.evaluate(() => window.genSeen);
    expect(
      seen.some((s) => /running.*step \d+ of \d+/.test(s)),
      seen.join("\n"),
    ).toBe(true);
    const size = await page
      .locator("#gen-images img")
      .first()
      .evaluate(async (el) => {
        const img = el as unknown as { decode(): Promise<void>; naturalWidth: number; naturalHeight: number };
        await img.decode();
        return [img.naturalWidth, img.naturalHeight];
      });
    expect(size).toEqual([model.spec.default_width, model.spec.default_height]);
    const id = (await page.locator("#result a[href^='/dashboard/jobs#']").textContent())!;
    const job = (await api(stack, "GET", `/v1/generations/${id}`, stack.apiKey)).body;
    expect(job.request.loras[0]).toMatchObject({ name: "dash-style", scale: 0.75 });
    await screenshot(page, "playground-result");

    // A ControlNet with a mask drawn on the canvas goes into the request as a PNG data URL.
    const control = page.getByLabel("ControlNet", { exact: true });
    const net = await control.locator("option").nth(1).getAttribute("value");
    await control.selectOption(net!);
    const box = (await page.locator("canvas.mask").boundingBox())!;
    await page.mouse.move(box.x + box.width * 0.2, box.y + box.height * 0.5);
    await page.mouse.down();
    await page.mouse.move(box.x + box.width * 0.8, box.y + box.height * 0.5, { steps: 8 });
    await page.mouse.up();
    const withNet = await page.locator("#curl-snippet").textContent();
    const drawn = JSON.parse(withNet!.slice(withNet!.indexOf("-d '") + 4, withNet!.lastIndexOf("'")));
    expect(drawn.controlnets[0].id).toBe(net);
    expect(drawn.controlnets[0].image).toMatch(/^data:image\/png;base64,/);
    await control.selectOption("");

    await go(page, "jobs");
    const row = page.locator(`tr[id='${id}']`);
    await row.locator(".badge-succeeded").waitFor();
    expect(await row.locator("img.thumb").count()).toBe(1);
    await row.locator("summary").click();
    expect(await row.locator("pre").textContent()).toContain('"provenance"');
    // A job created elsewhere appears without a reload, and a cancel asks first. It names a model the runner does
    // not serve, so that it waits.
    const idle = stack.models.find((m) => m !== stack.defaultModel)!;
    const queued = await api(stack, "POST", "/v1/generations", stack.apiKey, {
      model: idle,
      prompt: "a job to cancel",
    });
    expect(queued.status).toBe(202);
    const qrow = page.locator(`tr[id='${queued.body.id}']`);
    await qrow.locator(".badge-queued").waitFor({ timeout: 15_000 });
    await qrow.getByRole("button", { name: "Cancel" }).click();
    await page.getByRole("button", { name: "Cancel", exact: true }).and(page.locator("dialog button")).click();
    expect((await api(stack, "GET", `/v1/generations/${queued.body.id}`, stack.apiKey)).body.status).toBe("queued");
    await qrow.getByRole("button", { name: "Cancel" }).click();
    await page.locator("#confirm-ok").click();
    await qrow.locator(".badge-canceled").waitFor();
    await screenshot(page, "jobs");

    // Re-run asks for the same request again, add-ons pinned to the versions used.
    await row.getByRole("button", { name: "Re-run" }).click();
    await page.waitForSelector("#toast:has-text('Re-run queued as')");
    const again = (await page.locator("#toast").textContent())!.match(/gen_[0-9a-z]+/)![0];
    const rerun = (await api(stack, "GET", `/v1/generations/${again}`, stack.apiKey)).body;
    expect(rerun.request).toMatchObject({ seed: 7, steps, prompt: job.request.prompt });
    expect(rerun.request.loras[0]).toMatchObject({ id: job.request.loras[0].id, version: 1, scale: 0.75 });
    await page.locator(`tr[id='${again}']`).waitFor({ timeout: 15_000 });

    // The runner that made the image holds the LoRA warm, and the add-ons page says so.
    await go(page, "addons");
    await page.waitForSelector("tr[data-addon='dash-style'] td.warm:has-text('1 runner')", { timeout: 20_000 });
  });

  it("creates a scoped key shown once, and revokes it after confirmation", async () => {
    await go(page, "keys");
    await page.getByLabel("Name").fill("ci-key");
    await page.getByLabel("keys:write").uncheck();
    await page.getByLabel("addons:write").uncheck();
    await page.click("#create-key");
    const secret = (await page.locator("#new-key-secret").textContent())!;
    expect(secret).toMatch(/^igk_/);
    expect((await api(stack, "GET", "/v1/models", secret)).status).toBe(200);
    expect((await api(stack, "POST", "/v1/keys", secret, { name: "x" })).status).toBe(403);
    await page.waitForSelector("tr[data-key='ci-key'] td.scopes:has-text('generations:write')");
    await screenshot(page, "keys");
    await page.reload();
    await page.waitForSelector("tr[data-key='ci-key']");
    expect(await page.content()).not.toContain(secret);
    await page.locator("tr[data-key='ci-key']").getByRole("button", { name: "Revoke" }).click();
    await page.locator("#confirm-ok").click();
    await page.waitForSelector("tr[data-key='ci-key'] td.state:has-text('revoked')");
    expect((await api(stack, "GET", "/v1/models", secret)).status).toBe(401);
  });

  it("registers a webhook endpoint and shows its delivery, then redelivers", async () => {
    const url = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/hooks`;
    await go(page, "webhooks");
    await page.getByLabel("Endpoint URL").fill(url);
    await page.click("#add-endpoint");
    expect(await page.locator("#webhook-secret").textContent()).toMatch(/^whsec_/);
    await page.waitForSelector(`tr[data-url='${url}']`);
    // The queued job of the previous test was canceled: cancel another to cause a delivery.
    const g = await api(stack, "POST", "/v1/generations", stack.apiKey, {
      model: stack.models.find((m) => m !== stack.defaultModel),
      prompt: "webhook me",
    });
    await api(stack, "POST", `/v1/generations/${g.body.id}/cancel`, stack.apiKey);
    await waitFor("a webhook delivery", async () => received.some((r) => r.body.includes(g.body.id)), 30_000);
    const row = page.locator("#deliveries tr", { hasText: g.body.id });
    await row.locator(".badge-delivered").waitFor({ timeout: 15_000 });
    await screenshot(page, "webhooks");
    const before = received.length;
    await row.getByRole("button", { name: "Redeliver" }).click();
    await waitFor("the redelivery", async () => received.length > before, 30_000);
    expect(received.at(-1)!.headers["webhook-signature"]).toMatch(/^v1,/);
  });

  it("shows usage per day and per key as charts", async () => {
    await go(page, "usage");
    await page.waitForSelector("#usage-days canvas");
    expect(await page.locator("#usage-totals").textContent()).toMatch(/\d+ images in \d+ generations/);
    await page.waitForSelector("#usage-keys canvas");
    expect(await page.locator("[data-key='dashboard']").count()).toBe(1);
    await screenshot(page, "usage");
    await go(page, "models");
    expect(await page.locator(`[data-model='${stack.defaultModel}']`).count()).toBe(1);
    expect(await page.locator(".page[data-page='models'] section.card").count()).toBe(stack.models.length);
    await screenshot(page, "models");
  });

  it("lets an owner invite a member, who sees no admin actions and whom the API refuses them", async () => {
    await go(page, "users");
    await page.getByLabel("Email").fill(MEMBER.email);
    await page.getByLabel("Role", { exact: true }).selectOption("member");
    await page.click("#invite");
    const inviteUrl = (await page.locator("#invite-url").textContent())!;
    expect(inviteUrl).toContain("/dashboard/signup?invite=");
    await page.waitForSelector(`#invites tr[data-email='${MEMBER.email}']`);
    await screenshot(page, "users");

    const memberContext = await newContext(browser, problems);
    const m = await memberContext.newPage();
    await m.goto(inviteUrl);
    await m.getByLabel("Your name").fill(MEMBER.name);
    await m.getByLabel("Password").fill(MEMBER.password);
    await m.getByRole("button", { name: "Create account" }).click();
    await m.waitForSelector(".page[data-page='playground']");
    // The page hides what a member may not do…
    for (const name of ["API keys", "Webhooks", "Users"])
      expect(await m.getByRole("link", { name }).isVisible()).toBe(false);
    await go(m, "addons");
    await m.waitForSelector("tr[data-addon='dash-style']");
    expect(await m.getByRole("button", { name: "Delete" }).count()).toBe(0);
    expect(await m.locator("form[aria-label='Upload an add-on']").count()).toBe(0);
    await m.goto(`${stack.edgeUrl}/dashboard/keys`);
    await m.waitForSelector(".notice:has-text('Only admins')");
    // …and the API refuses it anyway.
    const addon = (await fromPage(m, "GET", "/v1/addons")).body.data.find(
      (a: { name: string }) => a.name === "dash-style",
    );
    for (const [method, path, body] of [
      ["POST", "/v1/keys", { name: "member-key" }],
      ["DELETE", `/v1/addons/${addon.id}`, undefined],
      ["POST", "/v1/webhooks/endpoints", { url: "https://example.com/h" }],
      ["POST", "/v1/invites", { email: "x@example.test", role: "owner" }],
    ] as const) {
      const res = await fromPage(m, method, path, body);
      expect(res.status, `${method} ${path}`).toBe(403);
      expect(res.body.error.code).toBe("insufficient_role");
    }
    // The member changes their password, then signs out everywhere: the session ends.
    await go(m, "account");
    await m.getByLabel("Current password").fill(MEMBER.password);
    await m.getByLabel("New password").fill("a new member password");
    await m.getByRole("button", { name: "Change password" }).click();
    await m.waitForSelector("#toast:has-text('Password changed')");
    // A member still generates.
    expect(
      (await fromPage(m, "POST", "/v1/generations", { model: stack.defaultModel, prompt: "member job" })).status,
    ).toBe(202);
    await m.click("#signout-all");
    await m.locator("#confirm-ok").click();
    await m.waitForSelector("form[aria-label='Sign in']");
    expect((await fromPage(m, "GET", "/v1/auth/session")).status).toBe(401);
    await m.getByLabel("Email").fill(MEMBER.email);
    await m.getByLabel("Password").fill(MEMBER.password);
    await m.getByLabel("Password").press("Enter");
    await m.waitForSelector("[role=alert]:has-text('invalid_credentials')");
    await m.getByLabel("Password").fill("a new member password");
    await m.getByLabel("Password").press("Enter");
    await m.waitForSelector(".page[data-page='playground']");
    await memberContext.close();

    await page.reload();
    const memberRow = page.locator(`#users tr[data-email='${MEMBER.email}']`);
    await memberRow.waitFor();
    expect(await memberRow.locator("select").inputValue()).toBe("member");
    // The owner promotes the member, then removes them (after confirming).
    await memberRow.locator("select").selectOption("admin");
    await page.waitForSelector(`#toast:has-text('${MEMBER.email} is now admin')`);
    const people = (await fromPage(page, "GET", "/v1/users")).body.data as Array<{ email: string; role: string }>;
    expect(people.find((u) => u.email === MEMBER.email)?.role).toBe("admin");
    await memberRow.getByRole("button", { name: "Remove" }).click();
    await page.locator("#confirm-ok").click();
    await memberRow.waitFor({ state: "detached" });
    const after = (await fromPage(page, "GET", "/v1/users")).body.data as Array<{ email: string }>;
    expect(after.map((u) => u.email)).not.toContain(MEMBER.email);
  });

  it("never shows another tenant's jobs, add-ons, keys or webhooks", async () => {
    const tenant = await admin("POST", "/admin/v1/tenants", { name: "Other Co" });
    other.tenantId = tenant.body.id;
    const key = await admin("POST", `/admin/v1/tenants/${other.tenantId}/keys`, { name: other.keyName });
    other.key = key.body.secret;
    const client = new ImageGen({ apiKey: other.key, baseURL: stack.edgeUrl });
    const model = await client.models.get(stack.defaultModel);
    const { readFileSync } = await import("node:fs");
    await client.addons.upload(readFileSync(loraFile(model.spec, other.addonName)), {
      kind: "lora",
      name: other.addonName,
      family: model.family,
    });
    const g = await client.generations.create({ model: stack.defaultModel, prompt: "other tenant's secret prompt" });
    other.generationId = g.id;
    await api(stack, "POST", "/v1/webhooks/endpoints", other.key, { url: "https://other.example.test/hook" });

    for (const [name, ready] of <Array<[string, string]>>[
      ["jobs", "tbody tr"],
      ["addons", "tr[data-addon='dash-style']"],
      ["keys", "tr[data-key]"],
      ["webhooks", "#endpoints tr[data-url]"],
      ["playground", ".pick[data-addon='dash-style']"],
    ]) {
      await go(page, name);
      await page.waitForSelector(ready);
      const text = (await page.locator("main").textContent()) ?? "";
      for (const secret of [
        "other tenant's secret prompt",
        other.addonName,
        other.keyName,
        "other.example.test",
        other.generationId,
      ])
        expect(text, `${name} shows ${secret}`).not.toContain(secret);
    }
    const direct = await fromPage(page, "GET", `/v1/generations/${other.generationId}`);
    expect(direct.status).toBe(404);
  });

  it("fits a phone (no sideways scroll at 375 px), passes axe-core's WCAG checks and works from the keyboard", async () => {
    const phone = await newContext(browser, problems, PHONE);
    await phone.addCookies(await owner.cookies());
    const p = await phone.newPage();
    for (const name of PAGES) {
      await go(p, name);
      expect(await sidewaysOverflow(p), `${name} scrolls sideways at 375 px`).toBe(0);
      expect(await accessibilityViolations(p), `${name} at 375 px`).toEqual([]);
      if (name === "playground" || name === "jobs") await screenshot(p, `phone-${name}`);
    }
    await phone.close();
    // Desktop too: axe-core finds no WCAG 2.1 A/AA violation on any page (labels, contrast, names, roles).
    await page.setViewportSize(DESKTOP);
    for (const name of PAGES) {
      await go(page, name);
      expect(await accessibilityViolations(page), name).toEqual([]);
    }
    // Keyboard: the skip link is the first stop, and focus is visible.
    await go(page, "models");
    await page.keyboard.press("Tab");
    expect(await page.evaluate(() => document.activeElement?.textContent)).toBe("Skip to content");
    const outline = await page.evaluate(() => getComputedStyle(document.activeElement!).outlineStyle);
    expect(outline).not.toBe("none");
  });

  it("keeps every screenshot small and the pages free of errors and CSP violations", async () => {
    // The detector works: an inline script injected into the page is refused and reported.
    await go(page, "models");
    await page.evaluate(() => {
      const s = document.createElement("script");
      s.textContent = "window.injected = true";
      document.head.append(s);
    });
    await waitFor("the CSP report", async () => problems.csp.length > 0, 5_000);
    expect(await page.evaluate(() => window.injected)).toBeUndefined();
    const injected = problems.csp.splice(0);
    expect(injected.join("\n")).toMatch(/inline script/i);
    // So does the accessibility check: an input without a label is reported.
    await page.evaluate("document.querySelector('main').append(document.createElement('input'))");
    expect((await accessibilityViolations(page)).join("\n")).toMatch(/^label: 1 × critical/m);

    for (const name of [...PAGES, "signin", "playground-result", "phone-playground", "phone-jobs"]) {
      const file = join(SCREENSHOTS, `${name}.png`);
      expect(statSync(file).size, file).toBeLessThan(150_000);
    }
    expect(problems.csp).toEqual([]);
    expect(problems.errors).toEqual([]);
  });
});
