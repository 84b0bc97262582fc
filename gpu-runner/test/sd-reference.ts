/**
 * The diffusers reference runs committed with the SD fixtures (`test/fixtures/sd/<family>/reference/<case>.safetensors`,
 * written by sd-fixtures/make_references.py): their tensors, and the generation request their settings describe.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parseHeader, readFloatTensor, type SafetensorsHeader } from "@imagegen/formats/safetensors";
import { expect } from "vitest";
import { type ReferenceSettings, requestFromSettings, toNhwc01 } from "../bench/sd-cost.ts";
import type { Bundle } from "../src/pipeline/bundle.ts";
import { generate, type GenerateOptions } from "../src/pipeline/pipeline.ts";
import type { GenerationRequest } from "../src/pipeline/request.ts";
import type { TextConditioning } from "../src/pipeline/text.ts";
import type { NoiseSource } from "../src/samplers/types.ts";

export const SD_FIXTURES = join(import.meta.dirname, "fixtures", "sd");

export type { ReferenceSettings };

export class Reference {
  readonly header: SafetensorsHeader;
  readonly settings: ReferenceSettings;
  private readonly bytes: Uint8Array;

  constructor(family: string, name = "base") {
    this.bytes = new Uint8Array(readFileSync(join(SD_FIXTURES, family, "reference", `${name}.safetensors`)));
    this.header = parseHeader(this.bytes, this.bytes.length);
    this.settings = JSON.parse(this.header.metadata.settings!) as ReferenceSettings;
  }

  has(name: string): boolean {
    return this.header.tensors.has(name);
  }

  floats(name: string): Float32Array {
    return readFloatTensor(this.bytes, this.header, name);
  }

  /** An I64 tensor (token ids) as numbers; undefined when the reference has none of that name. */
  ids(name: string): number[] | undefined {
    const t = this.header.tensors.get(name);
    if (t === undefined) return undefined;
    const start = this.header.dataOffset + t.begin;
    return Array.from(new BigInt64Array(this.bytes.slice(start, start + t.end - t.begin).buffer), Number);
  }

  /** The runner's request for the same run: prompt, negative prompt, sampler of the scheduler class, steps, guidance, size. */
  request(): GenerationRequest {
    return requestFromSettings(this.settings);
  }
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i]! - b[i]!));
  return max;
}

/** Max |diff| per stage; fp32 tolerances near optimum's ORT numbers, fp16 looser (half precision through every graph). */
export interface Tolerance {
  text: number;
  latents: number;
  image: number;
}

/**
 * Generates the reference's run on `bundle` from diffusers' own initial latents and injected noise (with the add-on
 * feeds given), checks the draws and timesteps, and returns max |diff| per stage: text states (and SDXL's
 * text_embeds, time_ids), final latents, image.
 */
export async function diffsFromReference(
  bundle: Bundle,
  ref: Reference,
  options: Pick<GenerateOptions, "unetInputs" | "textEncoderInputs"> = {},
): Promise<Record<string, number>> {
  const s = ref.settings;
  const noises = [...ref.header.tensors.keys()].filter((k) => k.startsWith("noise.")).length;
  let drawn = 0;
  const noise: NoiseSource = (size) => {
    const z = ref.floats(`noise.${drawn++}`);
    expect(z.length).toBe(size);
    return z;
  };
  let text: TextConditioning | undefined;
  let decoded: Float32Array | undefined;
  const result = await generate(bundle, ref.request(), {
    ...options,
    latents: { initial: ref.floats("initial_latents"), noise },
    inspect: (t) => ({ text, decoded } = t),
  });
  expect(drawn).toBe(noises);
  expect(result.timesteps).toEqual(Array.from(ref.floats("timesteps")));
  const diffs: Record<string, number> = {
    text: maxAbsDiff(text!.encoderHiddenStates.data as Float32Array, ref.floats("unet.encoder_hidden_states")),
    latents: maxAbsDiff(result.latents, ref.floats(`latents.${s.steps - 1}`)),
    image: maxAbsDiff(toNhwc01(decoded!, s.height, s.width), ref.floats("image")),
  };
  if (ref.has("unet.text_embeds")) {
    diffs.text_embeds = maxAbsDiff(text!.unetInputs.text_embeds!.data as Float32Array, ref.floats("unet.text_embeds"));
    diffs.time_ids = maxAbsDiff(text!.unetInputs.time_ids!.data as Float32Array, ref.floats("unet.time_ids"));
  }
  return diffs;
}

/** Asserts the diffs of `diffsFromReference` within a tolerance (SDXL's time_ids exactly). */
export function expectWithin(diffs: Record<string, number>, tolerance: Tolerance): void {
  expect(diffs.text).toBeLessThanOrEqual(tolerance.text);
  expect(diffs.text_embeds ?? 0).toBeLessThanOrEqual(tolerance.text);
  expect(diffs.time_ids ?? 0).toBe(0);
  expect(diffs.latents).toBeLessThanOrEqual(tolerance.latents);
  expect(diffs.image).toBeLessThanOrEqual(tolerance.image);
}

export const formatDiffs = (diffs: Record<string, number>) =>
  Object.entries(diffs)
    .map(([k, v]) => `${k} ${v.toExponential(2)}`)
    .join(", ");
