import { execFile } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { writeToyBundle } from "./fixtures/toy-bundle.ts";

const CLI = fileURLToPath(new URL("../src/cli.ts", import.meta.url));
const run = (args: string[]) =>
  promisify(execFile)(process.execPath, [CLI, ...args], { encoding: "utf8" }).then(
    (r) => ({ code: 0, ...r }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );

let bundle: string;
let out: string;
beforeAll(() => {
  bundle = writeToyBundle();
  out = mkdtempSync(join(tmpdir(), "cli-out-"));
});
afterAll(() => {
  for (const d of [bundle, out]) rmSync(d, { recursive: true, force: true });
});

describe("cli", () => {
  it("writes n PNGs, shows progress on stderr and lists the files on stdout", async () => {
    const r = await run([
      "a red circle",
      "--bundle",
      bundle,
      "--sampler",
      "lcm",
      "--steps",
      "4",
      "--n",
      "2",
      "--seed",
      "3",
      "--cache-interval",
      "2",
      "--out",
      join(out, "img.png"),
    ]);
    expect(r.code).toBe(0);
    const files = [join(out, "img-0.png"), join(out, "img-1.png")];
    expect(r.stdout.trim().split("\n")).toEqual(files);
    expect(r.stderr).toContain("4/4 steps");
    expect(r.stderr).toMatch(/lcm 4 steps, seed 3/);
    for (const f of files) expect(readFileSync(f).subarray(1, 4).toString()).toBe("PNG");
  });

  it("fails clearly on a bad bundle or bad flags", async () => {
    const missing = await run(["x", "--bundle", join(out, "nope"), "--out", join(out, "x.png")]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/BundleError: bundle .*nope is invalid:\n  - manifest\.json not found/);
    expect(existsSync(join(out, "x.png"))).toBe(false);
    const badSampler = await run(["x", "--bundle", bundle, "--sampler", "heun"]);
    expect(badSampler.code).toBe(2);
    expect(badSampler.stderr).toMatch(/--sampler must be one of ddim, lcm, rectified-flow/);
  });
});
