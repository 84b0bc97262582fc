/**
 * LoRA serving without rebuilding the model (DESIGN.md): the U-Net is exported with low-rank branch inputs at
 * each target layer, y = W x + up (down x), and a request's LoRAs are stacked along the rank axis with their
 * scales folded into `up`. Branches are per sample ([batch, rank, in] / [batch, out, rank]), so requests with
 * different LoRAs share one U-Net batch; samples with fewer ranks are padded with zeros, which add nothing.
 */
import { RunnerError } from "../errors.ts";
import type { LoraTarget } from "@imagegen/formats/manifest";
import { downFeatures, kernelSize, mapLoraKeys, type MapLoraOptions } from "@imagegen/formats/lora-keys";
import { endianness } from "node:os";
import {
  f16ToF32,
  parseHeader,
  readFloatTensor,
  SafetensorsError,
  type SafetensorsHeader,
} from "@imagegen/formats/safetensors";

export class LoraError extends RunnerError {
  override readonly name = "LoraError";
  constructor(message: string, options?: ErrorOptions) {
    super("lora_invalid", message, options);
  }
}

/** A refusal names this many problems (a LoRA for another model can have hundreds), then counts the rest. */
const ERRORS_SHOWN = 12;

export interface LoraLayer {
  rank: number;
  inFeatures: number;
  outFeatures: number;
  /** [rank, in], row-major ([rank, in·9] for a 3×3 convolution: `downFeatures` in @imagegen/formats/lora-keys). */
  down: Float32Array;
  /** [out, rank], row-major. */
  up: Float32Array;
  /** alpha / rank (1 without alpha). */
  scale: number;
}

export interface ParsedLora {
  layers: Map<string, LoraLayer>;
  bytes: number;
  /** Keys used of the file's total, and the keys that matched no layer (skipped only with `allowPartial`). */
  report?: { mapped: number; total: number; unmapped: string[] };
}

/** float16 bits → float32 for all 65536 values, built on first use: a cold LoRA's parse is mostly this conversion. */
let f16Table: Float32Array | undefined;

/**
 * A tensor of the file as float32. float16 (how LoRAs are shipped) converts through the table, ~10× faster than
 * `readFloatTensor`'s per-element decoding, with the same values and the same refusal of non-finite ones; other
 * dtypes (and a big-endian host) go through `readFloatTensor`.
 */
function readTensor(file: Uint8Array, header: SafetensorsHeader, name: string): Float32Array {
  const t = header.tensors.get(name);
  if (t?.dtype !== "F16" || endianness() !== "LE") return readFloatTensor(file, header, name);
  const count = (t.end - t.begin) / 2;
  const at = file.byteOffset + header.dataOffset + t.begin;
  const bits =
    at % 2 === 0
      ? new Uint16Array(file.buffer, at, count)
      : new Uint16Array(file.slice(header.dataOffset + t.begin, header.dataOffset + t.end).buffer);
  if (!f16Table) {
    f16Table = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) f16Table[h] = f16ToF32(h);
  }
  const table = f16Table;
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    const v = table[bits[i]!]!;
    if (!Number.isFinite(v)) throw new SafetensorsError(`tensor '${name}' holds a non-finite value at element ${i}`);
    out[i] = v;
  }
  return out;
}

/**
 * Parses a LoRA file (kohya or PEFT keys) for a model's targets. Any unusable key refuses the whole file; a key that
 * matches no layer is skipped (and reported) only with `allowPartial`.
 */
export function parseLora(
  file: Uint8Array,
  targets: LoraTarget[],
  maxRank: number,
  options: MapLoraOptions = {},
): ParsedLora {
  let header;
  try {
    header = parseHeader(file, file.byteLength);
  } catch (err) {
    if (err instanceof SafetensorsError) throw new LoraError(`not a valid safetensors file: ${err.message}`);
    throw err;
  }
  const mapping = mapLoraKeys(header.tensors.values(), targets, maxRank, options);
  if (mapping.errors.length) {
    const shown = mapping.errors.slice(0, ERRORS_SHOWN).join("; ");
    const more = mapping.errors.length > ERRORS_SHOWN ? `; and ${mapping.errors.length - ERRORS_SHOWN} more` : "";
    throw new LoraError(`${mapping.mapped} of ${mapping.total} keys map onto this model: ${shown}${more}`);
  }
  const peftAlpha = Number(header.metadata.lora_alpha ?? header.metadata.alpha ?? Number.NaN);
  const layers = new Map<string, LoraLayer>();
  for (const l of mapping.layers) {
    let alpha = l.rank;
    if (l.alphaKey) alpha = readFloatTensor(file, header, l.alphaKey)[0]!;
    else if (l.convention === "peft" && Number.isFinite(peftAlpha)) alpha = peftAlpha;
    layers.set(l.module, {
      rank: l.rank,
      inFeatures: l.inFeatures,
      outFeatures: l.outFeatures,
      down: readTensor(file, header, l.downKey),
      up: readTensor(file, header, l.upKey),
      scale: l.rank > 0 ? alpha / l.rank : 1,
    });
  }
  return {
    layers,
    bytes: file.byteLength,
    report: { mapped: mapping.mapped, total: mapping.total, unmapped: mapping.unmapped },
  };
}

export interface LoraUse {
  lora: ParsedLora;
  /** The request's scale; multiplied by the file's alpha / rank. */
  scale: number;
}

export interface BranchFeed {
  name: string;
  data: Float32Array;
  /** [batch, R, in] and [batch, out, R]; a 3×3 convolution's down is [batch, R, in, 9] (the kernel's taps last). */
  dims: number[];
}

/** Total rank each target gets for one sample's LoRAs. */
function rankOf(target: LoraTarget, uses: LoraUse[]): number {
  return uses.reduce((sum, u) => sum + (u.lora.layers.get(target.module)?.rank ?? 0), 0);
}

/**
 * One sample's LoRAs (per entry of `perSample`, in batch order) become the branch inputs of every target:
 * `down` [batch, R, in] ([batch, R, in, 9] at a 3×3 convolution: the same bytes as [batch, R, in·9]) and `up`
 * [batch, out, R], R the largest total rank of any sample at that target.
 */
export function stackLoras(targets: LoraTarget[], perSample: LoraUse[][], maxRank: number): BranchFeed[] {
  const feeds: BranchFeed[] = [];
  // When every sample has the same LoRAs (CFG's two passes, one image, a batch of one request), a 3×3 convolution
  // target is fed once, with batch 1: the graph then runs the LoRA as two convolutions whose weights are the inputs,
  // instead of per-sample 3×3 patches (bench/ADDONS.md: warm LoRA cost).
  const shared = perSample.length > 1 && perSample.every((uses) => sameUses(uses, perSample[0]!));
  for (const t of targets) {
    const samples = shared && kernelSize(t) > 1 ? perSample.slice(0, 1) : perSample;
    feeds.push(...stackTarget(t, samples, maxRank));
  }
  return feeds;
}

function sameUses(a: LoraUse[], b: LoraUse[]): boolean {
  return a.length === b.length && a.every((u, i) => u.lora === b[i]!.lora && u.scale === b[i]!.scale);
}

function stackTarget(t: LoraTarget, perSample: LoraUse[][], maxRank: number): BranchFeed[] {
  const batch = perSample.length;
  if (!t.down_input || !t.up_input)
    throw new LoraError(`target '${t.module}' has no branch inputs (a merge-mode bundle)`);
  const R = Math.max(0, ...perSample.map((uses) => rankOf(t, uses)));
  if (R > maxRank)
    throw new LoraError(`stacked LoRAs reach rank ${R} at '${t.module}', above the model's maximum of ${maxRank}`);
  const nIn = downFeatures(t);
  const nOut = t.out_features;
  const down = new Float32Array(batch * R * nIn);
  const up = new Float32Array(batch * nOut * R);
  perSample.forEach((uses, b) => {
    let r0 = 0;
    for (const use of uses) {
      const layer = use.lora.layers.get(t.module);
      if (!layer) continue;
      const s = use.scale * layer.scale;
      // down rows r0..r0+rank of sample b.
      down.set(layer.down, (b * R + r0) * nIn);
      // up columns r0..r0+rank of sample b, scaled.
      for (let o = 0; o < nOut; o++) {
        const row = (b * nOut + o) * R + r0;
        for (let r = 0; r < layer.rank; r++) up[row + r] = layer.up[o * layer.rank + r]! * s;
      }
      r0 += layer.rank;
    }
  });
  const k = kernelSize(t);
  return [
    { name: t.down_input, data: down, dims: k > 1 ? [batch, R, t.in_features, k] : [batch, R, nIn] },
    { name: t.up_input, data: up, dims: [batch, nOut, R] },
  ];
}
