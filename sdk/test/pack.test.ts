/**
 * The package as a user gets it: `npm pack`, installed into an empty folder (offline: it has no dependencies),
 * imported on Node 20 and Node 22, and type-checked by a consumer with strict settings and no skipLibCheck.
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const sdk = resolve(import.meta.dirname, "..");
const root = resolve(sdk, "..");
const node22 = join(root, "node_modules/node/bin/node");
// The system Node (20 here); npm scripts put the project's Node 22 first on PATH, so it is named by path.
const node20 = ["/usr/bin/node", "/usr/local/bin/node"].find(
  (p) => existsSync(p) && execFileSync(p, ["-v"], { encoding: "utf8" }).startsWith("v20."),
);
const work = mkdtempSync(join(tmpdir(), "imagegen-sdk-pack-"));
const consumer = join(work, "consumer");
const npm = (args: string[], cwd: string) =>
  execFileSync("npm", args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });

const script = `
import { ImageGen, APITimeoutError, APIConnectionError, verifyWebhook, signWebhook } from "@imagegen/sdk";
import { isRetryableStatus } from "@imagegen/sdk/retry";
const client = new ImageGen({ apiKey: "igk_x", baseURL: "http://127.0.0.1:9", maxRetries: 0 });
const secret = "whsec_" + btoa("a secret");
const body = JSON.stringify({ type: "generation.succeeded" });
const event = await verifyWebhook(body, await signWebhook(body, secret, "msg_1"), secret);
const err = await client.models.list().catch((e) => e);
console.log(JSON.stringify({ node: process.version, event, retryable: isRetryableStatus(503), connection: err instanceof APIConnectionError, timeoutClass: typeof APITimeoutError }));
`;

const typed = `
import { ImageGen, type Generation, type GenerationEvent, NotFoundError } from "@imagegen/sdk";
import { retryDelayMs } from "@imagegen/sdk/retry";
const client = new ImageGen({ apiKey: "k" });
export async function main(): Promise<string[]> {
  const g = await client.generations.createAndWait({ prompt: "a red circle", sampler: "lcm", steps: 4, loras: [{ id: "addon_1", scale: 0.8 }] });
  // @ts-expect-error: not a sampler; the types are the API's, not any
  await client.generations.create({ prompt: "x", sampler: "nope" });
  const plain: Generation = g;
  const ids: string[] = [plain.images[0]?.url ?? "", String(g._request_id), String(retryDelayMs(1))];
  for await (const e of client.generations.stream(g.id)) { const ev: GenerationEvent = e; ids.push(ev.data.status); }
  for await (const item of client.generations.list({ limit: 10 })) ids.push(item.id);
  const page = await client.addons.list();
  ids.push(...page.data.map((a) => a.kind));
  await client.addons.upload(new Uint8Array(4), { kind: "lora", name: "n", family: "f" }, { onProgress: (p) => ids.push(String(p.loaded / p.total)) });
  try { await client.models.get("m"); } catch (e) { if (e instanceof NotFoundError) ids.push(e.code, String(e.requestId)); }
  return ids;
}
`;

beforeAll(() => {
  npm(["pack", "--pack-destination", work, "--silent"], sdk); // `prepare` builds dist/ first
  const tarball = readdirSync(work).find((f) => f.endsWith(".tgz"))!;
  execFileSync("mkdir", ["-p", consumer]);
  writeFileSync(join(consumer, "package.json"), JSON.stringify({ name: "consumer", private: true, type: "module" }));
  npm(["install", "--offline", "--no-audit", "--no-fund", join(work, tarball)], consumer);
  writeFileSync(join(consumer, "main.mjs"), script);
  writeFileSync(join(consumer, "typed.ts"), typed);
  writeFileSync(
    join(consumer, "tsconfig.json"),
    JSON.stringify({
      compilerOptions: {
        target: "ES2022",
        lib: ["ES2022", "DOM", "DOM.AsyncIterable"],
        module: "NodeNext",
        moduleResolution: "NodeNext",
        strict: true,
        noEmit: true,
        skipLibCheck: false,
        types: [],
      },
      files: ["typed.ts"],
    }),
  );
}, 180_000);
afterAll(() => rmSync(work, { recursive: true, force: true }));

describe("the packed SDK", () => {
  it("ships only dist/ (.js and .d.ts) and a package.json with no dependencies", () => {
    const listing = npm(["pack", "--dry-run", "--json", "--ignore-scripts"], sdk);
    const files = (JSON.parse(listing)[0].files as Array<{ path: string }>).map((f) => f.path);
    expect(files).toContain("dist/index.js");
    expect(files).toContain("dist/index.d.ts");
    expect(files).toContain("dist/retry.js");
    expect(files.filter((f) => !/^(dist\/.*\.(js|d\.ts)|package\.json|README\.md)$/.test(f))).toEqual([]);
  });

  for (const [name, binary] of [
    ["Node 20", node20],
    ["Node 22", node22],
  ] as const) {
    it.skipIf(!binary)(`imports and runs on ${name}`, () => {
      const out = JSON.parse(execFileSync(binary!, ["main.mjs"], { cwd: consumer, encoding: "utf8" }));
      expect(out.node.startsWith(name === "Node 20" ? "v20." : "v22.")).toBe(true);
      expect(out).toMatchObject({
        event: { type: "generation.succeeded" },
        retryable: true,
        connection: true,
        timeoutClass: "function",
      });
    });
  }

  it("type-checks a strict consumer (no skipLibCheck) against the installed .d.ts", () => {
    const tsc = join(root, "node_modules/typescript/bin/tsc");
    const result = (() => {
      try {
        return execFileSync(node22, [tsc, "-p", consumer], { encoding: "utf8" });
      } catch (e) {
        return String((e as { stdout?: string }).stdout);
      }
    })();
    expect(result).toBe("");
  }, 60_000);
});
