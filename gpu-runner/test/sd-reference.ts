/**
 * The diffusers reference runs committed with the SD fixtures (`test/fixtures/sd/<family>/reference/<case>.safetensors`,
 * written by sd-fixtures/make_references.py): their tensors, and the generation request their settings describe.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parseHeader, readFloatTensor, type SafetensorsHeader } from "@imagegen/formats/safetensors";
import type { GenerationRequest } from "../src/pipeline/request.ts";
import { SCHEDULER_CLASSES } from "../src/samplers/index.ts";

export const SD_FIXTURES = join(import.meta.dirname, "fixtures", "sd");

/** `__metadata__.settings` of a reference: the run's settings as JSON. */
export interface ReferenceSettings {
  prompt: string;
  negative_prompt: string | null;
  scheduler: string;
  steps: number;
  guidance_scale: number;
  height: number;
  width: number;
}

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
    const s = this.settings;
    return {
      prompt: s.prompt,
      negative_prompt: s.negative_prompt ?? "",
      seed: 0,
      sampler: SCHEDULER_CLASSES[s.scheduler]!,
      steps: s.steps,
      guidance: s.guidance_scale,
      width: s.width,
      height: s.height,
    };
  }
}
