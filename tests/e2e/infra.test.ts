import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { describe, expect, it } from "vitest";

const root = resolve(import.meta.dirname, "../..");
const read = (p: string) => readFileSync(join(root, p), "utf8");

// No Docker engine runs here: check what can be checked without building the image.
describe("the runner's container image", () => {
  const dockerfile = read("infra/runner/Dockerfile");

  it("copies only paths that exist", () => {
    const sources = [...dockerfile.matchAll(/^COPY (?!--from)(.+) \S+$/gm)].flatMap((m) => m[1]!.trim().split(/\s+/));
    expect(sources.length).toBeGreaterThan(5);
    for (const src of sources) expect(existsSync(join(root, src)), src).toBe(true);
  });

  it("starts the runner daemon with settings the daemon reads", () => {
    const entry = dockerfile.match(/^ENTRYPOINT \[(.+)\]$/m)![1]!;
    const script = JSON.parse(`[${entry}]`)[1] as string;
    expect(existsSync(join(root, script))).toBe(true);
    const serve = read(script);
    for (const name of [...dockerfile.matchAll(/^\s+(?:ENV )?([A-Z_]+)=/gm)]
      .map((m) => m[1]!)
      .filter((n) => n !== "NODE_ENV")) {
      expect(serve, `${name} is set in the image but never read`).toContain(`process.env.${name}`);
    }
    expect(dockerfile).toMatch(/EXECUTION_PROVIDERS=cuda,cpu/);
    expect(read("gpu-runner/src/pipeline/bundle.ts")).toContain('"cuda"');
  });

  it("asks onnxruntime-node for its CUDA binaries, which developer installs skip", () => {
    expect(dockerfile).toContain("ONNXRUNTIME_NODE_INSTALL=cuda12");
    expect(read(".npmrc")).toMatch(/^onnxruntime-node-install=skip$/m);
  });
});
