/**
 * The committed zoo artifacts, as the runtime sees them (the zoo's Python test, zoo/tests/test_artifacts.py, checks
 * the same from PyTorch's side where Python is installed): every file is listed in SHA256SUMS and matches it, the
 * total stays small, every bundle's manifest matches its ONNX graphs, every LoRA file maps onto its family's
 * targets, and every ControlNet fits its family's U-Net.
 */
import { createHash } from "node:crypto";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { loadControlNet } from "../src/addons/controlnet.ts";
import { parseLora } from "../src/addons/lora.ts";
import { DEFAULT_SESSION_CONFIG, loadBundle, readManifest } from "../src/pipeline/bundle.ts";

const MODELS = fileURLToPath(new URL("../models/", import.meta.url));

function walk(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? walk(join(dir, e.name)) : [join(dir, e.name)],
  );
}

describe("committed zoo artifacts", () => {
  it("every file is listed in SHA256SUMS and matches it; nothing listed is missing; under 35 MB in all", () => {
    const listed = new Map(
      readFileSync(join(MODELS, "SHA256SUMS"), "utf8")
        .split("\n")
        .filter(Boolean)
        .map((l) => {
          const [digest, path] = l.split("  ");
          return [path!, digest!] as const;
        }),
    );
    const files = walk(MODELS)
      .map((f) => relative(MODELS, f))
      .filter((f) => f !== "SHA256SUMS" && !f.includes(".tmp"));
    expect(
      files.filter((f) => !listed.has(f)),
      "files not in SHA256SUMS",
    ).toEqual([]);
    expect(
      [...listed.keys()].filter((f) => !files.includes(f)),
      "listed but missing",
    ).toEqual([]);
    for (const f of files)
      expect(
        createHash("sha256")
          .update(readFileSync(join(MODELS, f)))
          .digest("hex"),
        f,
      ).toBe(listed.get(f));
    const total = files.reduce((s, f) => s + statSync(join(MODELS, f)).size, 0);
    expect(total).toBeLessThan(35e6);
  });

  const bundles = readdirSync(MODELS).filter((d) => {
    try {
      return readManifest(join(MODELS, d)).kind === "diffusion";
    } catch {
      return false;
    }
  });

  it("there is a trained default model and the random test bundles", () => {
    expect(bundles).toContain("tiny-shapes");
    expect(bundles).toContain("tiny-shapes-random");
  });

  it.each(bundles)("%s: the manifest matches the ONNX graphs; its add-ons fit the family", async (name) => {
    const dir = join(MODELS, name);
    const bundle = await loadBundle(dir, DEFAULT_SESSION_CONFIG);
    try {
      let addonDirs: string[] = [];
      try {
        addonDirs = readdirSync(join(dir, "addons"));
      } catch {
        /* no add-ons */
      }
      const spec = bundle.manifest.lora!;
      for (const entry of addonDirs) {
        const path = join(dir, "addons", entry);
        if (entry.endsWith(".safetensors")) {
          const lora = parseLora(new Uint8Array(readFileSync(path)), spec.targets, spec.max_rank);
          expect(lora.layers.size, entry).toBeGreaterThan(0);
        } else {
          const net = await loadControlNet(path, bundle.manifest, DEFAULT_SESSION_CONFIG);
          expect(net.manifest.family).toBe(bundle.manifest.family);
          await net.component.session.release();
        }
      }
    } finally {
      await bundle.release();
    }
  });
});
