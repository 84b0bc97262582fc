/**
 * Imported Stable Diffusion exports against diffusers (PyTorch): each committed fixture is imported from its
 * untouched export folder, generated with the reference run's initial latents (and LCM's injected noise), prompt,
 * sampler, steps and guidance, and compared stage by stage with `reference/base.safetensors`
 * (sd-fixtures/make_references.py). Tolerances sit near what optimum's own ONNX Runtime pipeline reaches
 * (test/fixtures/sd/REFERENCES.md).
 */
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { f16ToF32 } from "@imagegen/formats/safetensors";
import { afterAll, describe, expect, it } from "vitest";
import { importExport } from "../src/import/index.ts";
import { loadBundle } from "../src/pipeline/bundle.ts";
import { encodePrompt } from "../src/pipeline/text.ts";
import { toFloat16 } from "../src/pipeline/tensors.ts";
import {
  diffsFromReference,
  expectWithin,
  formatDiffs,
  Reference,
  SD_FIXTURES as FIXTURES,
  type Tolerance,
} from "./sd-reference.ts";

const out = mkdtempSync(join(tmpdir(), "sd-parity-"));
afterAll(() => rmSync(out, { recursive: true, force: true }));

const FP32: Tolerance = { text: 1e-5, latents: 1e-4, image: 1e-5 };
const FP16: Tolerance = { text: 5e-3, latents: 0.05, image: 2e-3 };

/** `reference`: the family whose diffusers run an export must reproduce (an fp16 export of sd15 against fp32 sd15). */
const CASES: Array<{ family: string; reference?: string; tolerance: Tolerance }> = [
  { family: "sd15", tolerance: FP32 },
  { family: "sd2v", tolerance: FP32 },
  { family: "lcm", tolerance: FP32 },
  { family: "sdxl", tolerance: FP32 },
  // fp16 graphs (and external data): the turbo fixture. An fp16 export of sd15, measured once against sd15's
  // reference (not committed, to keep the fixtures small): text 4.3e-3, latents 9.8e-3, image 1.1e-3.
  { family: "turbo", tolerance: FP16 },
];

describe("imported exports match diffusers (PyTorch) references", () => {
  for (const { family, reference, tolerance } of CASES) {
    it(`${family}: token ids exactly; text states, final latents and image within ${JSON.stringify(tolerance)}`, async () => {
      // A fixture that is not there fails the case: a skip would pass silently.
      expect(existsSync(join(FIXTURES, family)), `test/fixtures/sd/${family} is missing (sd-fixtures/)`).toBe(true);
      const ref = new Reference(reference ?? family);
      const s = ref.settings;
      const imported = await importExport(join(FIXTURES, family), { out, name: family });
      const bundle = await loadBundle(imported.dir);
      try {
        // Token ids: exactly the CLIPTokenizer's.
        expect(bundle.tokenizer.encode(s.prompt).ids).toEqual(ref.ids("input_ids"));
        if (s.negative_prompt !== null)
          expect(bundle.tokenizer.encode(s.negative_prompt).ids).toEqual(ref.ids("negative_input_ids"));
        if (bundle.tokenizer2) expect(bundle.tokenizer2.encode(s.prompt).ids).toEqual(ref.ids("input_ids_2"));

        const diffs = await diffsFromReference(bundle, ref);
        console.log(`parity ${family}: ${formatDiffs(diffs)}`);
        expectWithin(diffs, tolerance);
      } finally {
        await bundle.release();
      }
    });
  }
});

describe("SDXL's unconditional rows", () => {
  it("are zeros when no negative prompt is given (force_zeros_for_empty_prompt), an encoded empty prompt otherwise", async () => {
    const { dir } = await importExport(join(FIXTURES, "sdxl"), { out, name: "sdxl-zeros" });
    const bundle = await loadBundle(dir);
    try {
      const size = { width: 64, height: 64 };
      const guided = await encodePrompt(bundle, { rows: ["", "a castle"], unconditional: 1, ...size });
      const states = guided.encoderHiddenStates.data as Float32Array;
      const pooled = guided.unetInputs.text_embeds!.data as Float32Array;
      expect(guided.encoderHiddenStates.dims).toEqual([2, 77, 64]);
      expect(states.subarray(0, states.length / 2).every((v) => v === 0)).toBe(true);
      expect(pooled.subarray(0, pooled.length / 2).every((v) => v === 0)).toBe(true);
      expect(states.subarray(states.length / 2).some((v) => v !== 0)).toBe(true);
      const prompt = await encodePrompt(bundle, { rows: [""], unconditional: 0, ...size });
      expect((prompt.encoderHiddenStates.data as Float32Array).some((v) => v !== 0)).toBe(true);
      expect(Array.from(guided.unetInputs.time_ids!.data as Float32Array)).toEqual([
        64, 64, 0, 0, 64, 64, 64, 64, 0, 0, 64, 64,
      ]);
    } finally {
      await bundle.release();
    }
  });
});

describe("the fp16 boundary", () => {
  it("rounds float32 to the nearest half (ties to even), with subnormals, overflow to infinity and NaN", () => {
    const values = [1, -2, 0.1, 65504, 65520, 6e-8, 1e-8, 2 ** -14, 1 + 2 ** -11, 1 + 3 * 2 ** -11, Number.NaN];
    expect(Array.from(toFloat16(Float32Array.from(values)), (h) => h.toString(16))).toEqual([
      "3c00",
      "c000",
      "2e66",
      "7bff",
      "7c00",
      "1",
      "0",
      "400",
      "3c00",
      "3c02",
      "7e00",
    ]);
    // Every half survives the round trip.
    const all = Uint16Array.from({ length: 0x7c00 }, (_, i) => i);
    expect(toFloat16(Float32Array.from(all, f16ToF32))).toEqual(all);
  });
});
