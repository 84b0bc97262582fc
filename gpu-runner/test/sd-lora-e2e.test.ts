/**
 * LoRAs on imported Stable Diffusion exports, end to end: each fixture is imported with `--lora merge` and with
 * `--lora branch`, the reference's LoRA files go through the worker's add-on runtime (parsed per model, merged into
 * a session per set, or stacked into the U-Net's and text encoders' branch inputs), and the whole pipeline runs from
 * diffusers' initial latents: text states, final latents and decoded image against diffusers' `load_lora_weights`
 * runs (reference/<case>.safetensors). LCM-LoRA + a style LoRA runs a standard SD 1.5 with the LCM sampler in 4 steps.
 */
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { encodeSafetensors, parseHeader, readFloatTensor } from "@imagegen/formats/safetensors";
import { afterAll, describe, expect, it } from "vitest";
import { LoraError } from "../src/addons/lora.ts";
import type { RequestAddons } from "../src/addons/request-addons.ts";
import { AddonRuntime } from "../src/addons/runtime.ts";
import { importExport, type LoraImportMode } from "../src/import/index.ts";
import { DEFAULT_SESSION_CONFIG, loadBundle, type Bundle } from "../src/pipeline/bundle.ts";
import { generate } from "../src/pipeline/pipeline.ts";
import {
  diffsFromReference,
  expectWithin,
  formatDiffs,
  Reference,
  SD_FIXTURES,
  type Tolerance,
} from "./sd-reference.ts";

const out = mkdtempSync(join(tmpdir(), "sd-lora-e2e-"));
const bundles = new Map<string, Promise<Bundle>>();
afterAll(async () => {
  for (const b of bundles.values()) await (await b).release();
  rmSync(out, { recursive: true, force: true });
});

/** One import per family and mode, shared by the cases. */
function imported(family: string, mode: LoraImportMode): Promise<Bundle> {
  const key = `${family}-${mode}`;
  let b = bundles.get(key);
  if (!b)
    bundles.set(
      key,
      (b = importExport(join(SD_FIXTURES, family), { out, name: key, lora: mode }).then((r) => loadBundle(r.dir))),
    );
  return b;
}

const loraFile = (family: string, file: string) =>
  new Uint8Array(readFileSync(join(SD_FIXTURES, family, "loras", file)));
const sha = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");

function addonsOf(family: string, ref: Reference): RequestAddons {
  const loras = (JSON.parse(ref.header.metadata.settings!) as { loras: { file: string; scale: number }[] }).loras;
  return {
    loras: loras.map((l) => ({
      bytes: loraFile(family, l.file),
      sha256: sha(loraFile(family, l.file)),
      scale: l.scale,
    })),
    controlnets: [],
  };
}

/** The worker's path for one request: the bundle the batch runs on, and its U-Net and text-encoder feeds. */
async function serve(runtime: AddonRuntime, bundle: Bundle, addons: RequestAddons) {
  const on = await runtime.bundleFor(bundle, [addons]);
  const unetInputs = await runtime.provider(on, [1], [addons]);
  const textEncoderInputs = runtime.textInputs(on, [1], [addons]);
  return {
    on,
    options: { ...(unetInputs ? { unetInputs } : {}), ...(textEncoderInputs ? { textEncoderInputs } : {}) },
  };
}

/** fp32: near optimum's own ORT pipeline without LoRA (fixtures/sd/REFERENCES.md); fp16 turbo as in sd-parity. */
const FP32: Tolerance = { text: 1e-5, latents: 1e-4, image: 1e-5 };
const FP16: Tolerance = { text: 8e-3, latents: 0.05, image: 2e-3 };

const CASES: Array<[family: string, reference: string, tolerance: Tolerance]> = [
  ["sd15", "style_1.0", FP32],
  ["sd15", "style_0.5", FP32],
  ["sd15", "subject_peft_1.0", FP32],
  ["sd15", "lcm_lora_style", FP32],
  ["sd2v", "style_1.0", FP32],
  ["lcm", "style_1.0", FP32],
  ["sdxl", "style_1.0", FP32],
  ["turbo", "style_1.0", FP16],
];

describe.each(CASES)("%s %s: the whole pipeline against diffusers' load_lora_weights", (family, name, tolerance) => {
  for (const mode of ["merge", "branch"] as const) {
    it(`${mode}: text states, final latents and image within ${JSON.stringify(tolerance)}`, async () => {
      const ref = new Reference(family, name);
      const bundle = await imported(family, mode);
      expect(bundle.manifest.lora?.mode).toBe(mode);
      const runtime = new AddonRuntime(DEFAULT_SESSION_CONFIG, { mergeHotAfter: 0 });
      const { on, options } = await serve(runtime, bundle, addonsOf(family, ref));
      // Merge mode runs a merged session set (text encoders included); branch mode the import's own sessions.
      expect(on === bundle).toBe(mode === "branch");
      const diffs = await diffsFromReference(on, ref, options);
      console.log(`lora e2e ${family}/${name} ${mode}: ${formatDiffs(diffs)}`);
      expectWithin(diffs, tolerance);
    });
  }
});

describe("LCM-LoRA on a standard model", () => {
  it("the importer offers the LCM sampler (LCMScheduler.from_config of the export's scheduler), and without the LoRA the run is far off", async () => {
    const bundle = await imported("sd15", "branch");
    expect(bundle.manifest.samplers).toContain("lcm");
    const ref = new Reference("sd15", "lcm_lora_style");
    expect(ref.request()).toMatchObject({ sampler: "lcm", steps: 4, guidance: 1 });
    // The same run without its LoRAs: the comparison above can fail.
    const diffs = await diffsFromReference(bundle, ref);
    expect(diffs.latents).toBeGreaterThan(100 * FP32.latents);
  });

  it("guidance above 1 runs classifier-free guidance with the LCM sampler (diffusers: no timestep_cond), one pass at 1", async () => {
    const bundle = await imported("sd15", "branch");
    const request = { prompt: "a fox", seed: 3, sampler: "lcm" as const, steps: 4, width: 64, height: 64 };
    expect((await generate(bundle, { ...request, guidance: 1.5 })).classifierFreeGuidance).toBe(true);
    bundle.components.unet.resetCounters();
    expect((await generate(bundle, { ...request, guidance: 1 })).classifierFreeGuidance).toBe(false);
    expect(bundle.components.unet.runs).toBe(4);
  });
});

describe("a branch import switches LoRA sets per request, on one session set", () => {
  it("style, PEFT subject and base references in turn, text encoders included", async () => {
    const bundle = await imported("sd15", "branch");
    const runtime = new AddonRuntime(DEFAULT_SESSION_CONFIG, { mergeHotAfter: 0 });
    for (const name of ["style_1.0", "subject_peft_1.0", "base"]) {
      const ref = new Reference("sd15", name);
      const { on, options } = await serve(runtime, bundle, addonsOf("sd15", ref));
      expect(on).toBe(bundle);
      expectWithin(await diffsFromReference(on, ref, options), FP32);
    }
  });

  it("a hot set merged into a branch import's weights (text encoders too) gives the stacked result", async () => {
    const bundle = await imported("sd15", "branch");
    const runtime = new AddonRuntime(DEFAULT_SESSION_CONFIG, { mergeHotAfter: 1 });
    const ref = new Reference("sd15", "style_1.0");
    const addons = addonsOf("sd15", ref);
    await runtime.bundleFor(bundle, [addons]);
    await runtime.mergesSettled();
    const { on, options } = await serve(runtime, bundle, addons);
    expect(on.lorasMerged).toBeDefined();
    expect(on.components.text_encoder).not.toBe(bundle.components.text_encoder);
    expect(options.textEncoderInputs).toBeUndefined(); // the text encoders' branches stay at rank 0
    expectWithin(await diffsFromReference(on, ref, options), FP32);
  });
});

describe("LoRA files that do not fit an imported model", () => {
  /** The style LoRA plus a key for a block SD 1.5 does not have. */
  function partialStyle(): { bytes: Uint8Array; keys: number } {
    const style = loraFile("sd15", "style_kohya.safetensors");
    const header = parseHeader(style, style.byteLength);
    const tensors: Record<string, { shape: number[]; data: Float32Array }> = {};
    for (const t of header.tensors.values())
      tensors[t.name] = { shape: t.shape, data: readFloatTensor(style, header, t.name).slice() };
    tensors["lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight"] = {
      shape: [4, 8],
      data: new Float32Array(32),
    };
    return { bytes: encodeSafetensors(tensors), keys: header.tensors.size };
  }

  it("a file that maps in part is refused naming the key, unless the request opts in; the load reports mapped / total", async () => {
    const { bytes, keys } = partialStyle();
    for (const mode of ["merge", "branch"] as const) {
      const bundle = await imported("sd15", mode);
      const runtime = new AddonRuntime(DEFAULT_SESSION_CONFIG, { mergeHotAfter: 0 });
      const lora = { bytes, sha256: sha(bytes), scale: 1 };
      const refused = { loras: [lora], controlnets: [] };
      await expect(serve(runtime, bundle, refused)).rejects.toThrow(
        /'lora_unet_down_blocks_7_attentions_0_proj_in\.lora_down\.weight' matches no LoRA target/,
      );
      // The opt-in is part of the parsed file's cache key: the same file opted in is served ...
      const opted: RequestAddons = { loras: [{ ...lora, allowPartial: true }], controlnets: [] };
      const ref = new Reference("sd15", "style_1.0");
      const { on, options } = await serve(runtime, bundle, opted);
      expectWithin(await diffsFromReference(on, ref, options), FP32);
      expect(runtime.loraReports(bundle, [opted])).toEqual([[{ sha256: lora.sha256, mapped: keys, total: keys + 1 }]]);
      // ... and refused again for a request that did not opt in.
      await expect(runtime.provider(bundle, [1], [refused])).rejects.toThrow(LoraError);
    }
  });

  it("an SDXL LoRA on SD 1.5 is refused naming the mismatch, allow_partial or not", async () => {
    const bundle = await imported("sd15", "branch");
    const runtime = new AddonRuntime(DEFAULT_SESSION_CONFIG, { mergeHotAfter: 0 });
    const bytes = loraFile("sdxl", "style_kohya.safetensors");
    for (const allowPartial of [false, true]) {
      const addons: RequestAddons = { loras: [{ bytes, sha256: sha(bytes), scale: 1, allowPartial }], controlnets: [] };
      await expect(serve(runtime, bundle, addons)).rejects.toThrow(
        /keys map onto this model: .*are for a model with two text encoders/,
      );
    }
  });
});
