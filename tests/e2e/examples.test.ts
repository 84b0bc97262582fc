/** Runs each TypeScript example (examples/ts/) against the real stack, as a user would after `npm start`. */
import { execFile } from "node:child_process";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startStack, type Stack } from "./stack.ts";

const examples = resolve(import.meta.dirname, "../../examples/ts");
let stack: Stack;

beforeAll(async () => {
  stack = await startStack();
});
afterAll(() => stack?.stop());

async function run(example: string): Promise<Record<string, unknown>> {
  const env = {
    ...process.env,
    IMAGEGEN_BASE_URL: stack.edgeUrl,
    IMAGEGEN_API_KEY: stack.apiKey,
    IMAGEGEN_MODEL: stack.defaultModel,
  };
  const { stdout } = await promisify(execFile)(process.execPath, [join(examples, example)], { env, timeout: 150_000 });
  return JSON.parse(stdout.trim().split("\n").at(-1)!);
}

describe("examples/ts", () => {
  it("generate.ts draws an image", async () => {
    expect(await run("generate.ts")).toMatchObject({
      status: "succeeded",
      url: expect.stringMatching(/^http/),
      request_id: expect.any(String),
    });
  });

  it("two-loras.ts stacks two LoRAs on one generation", async () => {
    const out = await run("two-loras.ts");
    expect(out.status).toBe("succeeded");
    expect(out.loras).toHaveLength(2);
  });

  it("upload-addon.ts uploads a LoRA with progress and draws with it", async () => {
    expect(await run("upload-addon.ts")).toMatchObject({
      status: "ready",
      version: 1,
      generation: expect.stringMatching(/^gen_/),
    });
  });

  it("stream-progress.ts follows a generation to its end over SSE", async () => {
    const out = await run("stream-progress.ts");
    expect(out.final).toBe("succeeded");
    expect((out.statuses as string[]).length).toBeGreaterThanOrEqual(2);
  });

  it("verify-webhook.ts receives a delivery and verifies its Standard Webhooks signature", async () => {
    expect(await run("verify-webhook.ts")).toMatchObject({
      verified: true,
      type: expect.stringMatching(/^generation\./),
      status: "succeeded",
    });
  });
});
