import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium, type Browser } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodeSafetensors } from "@imagegen/formats/safetensors";
import { api, startStack, type Stack } from "./stack.ts";

const CHROMIUM = "/usr/bin/chromium";
let stack: Stack;
let browser: Browser;

beforeAll(async () => {
  // A browser test that cannot run fails: .ci/run installs Debian's chromium.
  if (!existsSync(CHROMIUM))
    throw new Error(`no Chromium at ${CHROMIUM}: apt-get install -y chromium (as .ci/run does)`);
  stack = await startStack({ runners: 1 });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      "--disable-quic",
      "--disable-dev-shm-usage",
    ],
  });
});
afterAll(async () => {
  await browser?.close();
  await stack?.stop();
});

describe("dashboard, in a real browser", () => {
  it("signs in with an API key, generates, uploads a LoRA, creates and revokes a key", async () => {
    const page = await browser.newPage();
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(`${stack.edgeUrl}/dashboard`);
    await page.fill("#key", "igk_wrong");
    await page.click("#signin");
    await page.waitForSelector("#login-error:has-text('Invalid API key')");

    await page.fill("#key", stack.apiKey);
    await page.click("#signin");
    await page.waitForSelector("#app:not([hidden])");
    expect(await page.locator("#model option").count()).toBe(stack.models.length);
    await page.selectOption("#model", stack.defaultModel);
    await page.fill("#seed", "7");
    await page.click("#generate");
    await page.waitForSelector("#gen-status:has-text('succeeded')", { timeout: 60_000 });
    const width = await page
      .locator("#gen-images img")
      .first()
      .evaluate(async (el) => {
        const image = el as unknown as { decode(): Promise<void>; naturalWidth: number };
        await image.decode();
        return image.naturalWidth;
      });
    expect(width).toBe(64);
    await page.waitForSelector("#jobs tr .status-succeeded");

    // Upload a LoRA for the model's first target, through the presigned PUT, and see it validated.
    const model = await api(stack, "GET", `/v1/models/${stack.defaultModel}`, stack.apiKey);
    const t = model.body.spec.lora_targets[0];
    const prefix = `lora_unet_${t.module.replace(/\./g, "_")}`;
    const dir = join(tmpdir(), "dashboard-e2e");
    mkdirSync(dir, { recursive: true });
    const file = join(dir, "dash-style.safetensors");
    writeFileSync(
      file,
      encodeSafetensors({
        [`${prefix}.lora_down.weight`]: {
          shape: [2, t.in_features],
          data: new Float32Array(2 * t.in_features).fill(0.05),
        },
        [`${prefix}.lora_up.weight`]: {
          shape: [t.out_features, 2],
          data: new Float32Array(2 * t.out_features).fill(0.05),
        },
      }),
    );
    await page.setInputFiles("#addon-file", file);
    await page.click("#upload");
    await page.waitForSelector("#upload-status:has-text('dash-style v1: ready')", { timeout: 30_000 });
    await page.waitForSelector("#addons td:has-text('dash-style')");
    expect(await page.locator("#lora option", { hasText: "dash-style" }).count()).toBe(1);

    await page.fill("#key-name", "ci-key");
    await page.click("#create-key");
    const secret = await page.locator("#new-key-secret").textContent();
    expect(secret).toMatch(/^igk_/);
    expect((await api(stack, "GET", "/v1/models", secret!)).status).toBe(200);
    await page.locator("#keys tr", { hasText: "ci-key" }).getByRole("button", { name: "Revoke" }).click();
    await page.waitForSelector("#keys tr:has-text('ci-key') td:has-text('revoked')");
    expect((await api(stack, "GET", "/v1/models", secret!)).status).toBe(401);

    await page.screenshot({ path: join(tmpdir(), "dashboard.png"), fullPage: true });
    expect(errors).toEqual([]);
  });
});
