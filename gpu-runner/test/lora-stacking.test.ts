import { readFileSync } from "node:fs";
import { join } from "node:path";
import * as ort from "onnxruntime-node";
import { beforeAll, describe, expect, it } from "vitest";
import { LoraError, parseLora, stackLoras, type LoraUse, type ParsedLora } from "../src/addons/lora.ts";
import { ModelManifest } from "@imagegen/formats/manifest";
import { encodeSafetensors } from "@imagegen/formats/safetensors";

const dir = join(import.meta.dirname, "../models/tiny-shapes-random");
const manifest = ModelManifest.parse(JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8")));
const { targets, max_rank: maxRank } = manifest.lora!;
const unetSpec = manifest.components.unet;
let session: ort.InferenceSession;
let kohya: ParsedLora;
let peft: ParsedLora;

function seeded(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32 - 0.5;
  });
}

/** Runs the whole U-Net on a fixed input with the given per-sample LoRAs. */
async function unet(perSample: LoraUse[][]): Promise<Float32Array> {
  const batch = perSample.length;
  const feeds: Record<string, ort.Tensor> = {};
  for (const spec of unetSpec.inputs) {
    if (spec.name.startsWith("lora_")) continue;
    // Every sample gets the same inputs, so samples differ only by their LoRAs.
    const one = spec.shape.slice(1).reduce<number>((a, d) => a * (d as number), 1);
    const sample =
      spec.name === "timestep"
        ? new Float32Array(one).fill(500)
        : spec.name.includes("residual")
          ? new Float32Array(one)
          : seeded(one, spec.name.length);
    const data = new Float32Array(one * batch);
    for (let b = 0; b < batch; b++) data.set(sample, b * one);
    feeds[spec.name] = new ort.Tensor("float32", data, [batch, ...spec.shape.slice(1).map(Number)]);
  }
  for (const f of stackLoras(targets, perSample, maxRank)) feeds[f.name] = new ort.Tensor("float32", f.data, f.dims);
  const out = await session.run(feeds);
  return out[unetSpec.outputs[0]!.name]!.data as Float32Array;
}

const maxDiff = (a: Float32Array, b: Float32Array) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);

beforeAll(async () => {
  session = await ort.InferenceSession.create(join(dir, unetSpec.path), { intraOpNumThreads: 1 });
  kohya = parseLora(new Uint8Array(readFileSync(join(dir, "addons/random-lora-kohya.safetensors"))), targets, maxRank);
  peft = parseLora(new Uint8Array(readFileSync(join(dir, "addons/random-lora-peft.safetensors"))), targets, maxRank);
});

describe("LoRA branches on the real U-Net", () => {
  it("a LoRA changes the output; at scale 0 it changes nothing", async () => {
    const base = await unet([[]]);
    const styled = await unet([[{ lora: kohya, scale: 1 }]]);
    const off = await unet([[{ lora: kohya, scale: 0 }]]);
    expect(maxDiff(base, styled)).toBeGreaterThan(1e-4);
    expect(maxDiff(base, off)).toBeLessThan(1e-6);
  });

  it("the scale is applied: the branch's effect is linear in it", async () => {
    const base = await unet([[]]);
    const half = await unet([[{ lora: kohya, scale: 0.5 }]]);
    const full = await unet([[{ lora: kohya, scale: 1 }]]);
    // Small branches act linearly to first order: the half-scale delta is about half the full one.
    const dHalf = half.map((v, i) => v - base[i]!);
    const dFull = full.map((v, i) => v - base[i]!);
    const ratio = dHalf.reduce((s, v, i) => s + v * dFull[i]!, 0) / dFull.reduce((s, v) => s + v * v, 0);
    expect(ratio).toBeGreaterThan(0.4);
    expect(ratio).toBeLessThan(0.6);
  });

  it("stacking concatenates ranks: two halves equal one whole", async () => {
    const whole = await unet([[{ lora: kohya, scale: 1 }]]);
    const halves = await unet([
      [
        { lora: kohya, scale: 0.5 },
        { lora: kohya, scale: 0.5 },
      ],
    ]);
    expect(maxDiff(whole, halves)).toBeLessThan(1e-4);
    const feeds = stackLoras(
      targets,
      [
        [
          { lora: kohya, scale: 0.5 },
          { lora: kohya, scale: 0.5 },
        ],
      ],
      maxRank,
    );
    const firstRank = kohya.layers.get(targets[0]!.module)?.rank ?? 0;
    expect(feeds[0]!.dims[1]).toBe(2 * firstRank);
  });

  it("kohya and PEFT files of one LoRA give the same output", async () => {
    // The zoo's kohya LoRA, re-keyed in the PEFT convention with its alpha in the metadata.
    const tensors: Record<string, { shape: number[]; data: Float32Array }> = {};
    let alpha = 0;
    for (const [module, l] of kohya.layers) {
      const conv = targets.find((t) => t.module === module)!.kind === "conv3x3";
      tensors[`unet.${module}.lora_A.weight`] = {
        shape: conv ? [l.rank, l.inFeatures, 3, 3] : [l.rank, l.inFeatures],
        data: l.down,
      };
      tensors[`unet.${module}.lora_B.weight`] = {
        shape: conv ? [l.outFeatures, l.rank, 1, 1] : [l.outFeatures, l.rank],
        data: l.up,
      };
      alpha = l.scale * l.rank;
    }
    const asPeft = parseLora(encodeSafetensors(tensors, { lora_alpha: String(alpha) }), targets, maxRank);
    const a = await unet([[{ lora: kohya, scale: 1 }]]);
    const b = await unet([[{ lora: asPeft, scale: 1 }]]);
    expect(maxDiff(a, b)).toBeLessThan(1e-6);
    // The zoo's own PEFT file (another random LoRA) parses and has an effect.
    expect(maxDiff(await unet([[]]), await unet([[{ lora: peft, scale: 1 }]]))).toBeGreaterThan(1e-4);
  });

  it("per-sample branches: requests with different LoRAs share a batch without leaking into each other", async () => {
    const [plain] = [await unet([[]])];
    const [styled] = [await unet([[{ lora: kohya, scale: 1 }]])];
    const mixed = await unet([[{ lora: kohya, scale: 1 }], []]);
    const n = plain.length;
    expect(maxDiff(mixed.subarray(0, n), styled)).toBeLessThan(1e-5);
    expect(maxDiff(mixed.subarray(n), plain)).toBeLessThan(1e-5);
  });

  it("3×3 convolution targets (LoCon): the kernel reaches the graph flattened, and those branches act on their own", async () => {
    const convs = targets.filter((t) => t.kind === "conv3x3");
    expect(convs.length).toBeGreaterThan(0);
    const only = (keep: (kind: string | undefined) => boolean): ParsedLora => ({
      bytes: 0,
      layers: new Map([...kohya.layers].filter(([m]) => keep(targets.find((t) => t.module === m)!.kind))),
    });
    const convOnly = only((k) => k === "conv3x3");
    const linearOnly = only((k) => k !== "conv3x3");
    expect(convOnly.layers.size).toBe(convs.length);
    // The file's down kernel [r, in, 3, 3] is fed as [batch, r, in, 9] in the same row-major order.
    const c = convs[0]!;
    const layer = kohya.layers.get(c.module)!;
    expect(layer.down.length).toBe(layer.rank * c.in_features * 9);
    const feeds = stackLoras(targets, [[], [{ lora: kohya, scale: 1 }]], maxRank);
    const down = feeds.find((f) => f.name === c.down_input)!;
    expect(down.dims).toEqual([2, layer.rank, c.in_features, 9]);
    expect(Array.from(down.data.subarray(0, layer.rank * c.in_features * 9)).every((v) => v === 0)).toBe(true);
    expect(Array.from(down.data.subarray(layer.rank * c.in_features * 9))).toEqual(Array.from(layer.down));
    // The convolution branches change the output by themselves, and differently from the linear ones; at a small
    // scale (first order) both together change it by the sum of the two.
    const s = 0.05;
    const base = await unet([[]]);
    const dConv = (await unet([[{ lora: convOnly, scale: s }]])).map((v, i) => v - base[i]!);
    const dLin = (await unet([[{ lora: linearOnly, scale: s }]])).map((v, i) => v - base[i]!);
    const dBoth = (await unet([[{ lora: kohya, scale: s }]])).map((v, i) => v - base[i]!);
    const norm = (a: Float32Array) => Math.sqrt(a.reduce((sum, v) => sum + v * v, 0));
    expect(norm(dConv)).toBeGreaterThan(1e-3);
    expect(maxDiff(dConv, dLin)).toBeGreaterThan(1e-3);
    const resid = dBoth.map((v, i) => v - dConv[i]! - dLin[i]!);
    expect(norm(resid)).toBeLessThan(0.2 * norm(dBoth));
  });

  it("a batch whose samples share their LoRAs feeds the convolutions once, with the same result", async () => {
    const same = [[{ lora: kohya, scale: 0.7 }], [{ lora: kohya, scale: 0.7 }]];
    const feeds = stackLoras(targets, same, maxRank);
    const conv = targets.find((t) => t.kind === "conv3x3")!;
    const linear = targets.find((t) => t.kind !== "conv3x3")!;
    expect(feeds.find((f) => f.name === conv.down_input)!.dims[0]).toBe(1);
    expect(feeds.find((f) => f.name === conv.up_input)!.dims[0]).toBe(1);
    expect(feeds.find((f) => f.name === linear.down_input)!.dims[0]).toBe(2);
    // The same LoRA under another object is not known to be shared: every sample is fed (the per-sample path).
    const copy: ParsedLora = { bytes: kohya.bytes, layers: new Map(kohya.layers) };
    const apart = [[{ lora: kohya, scale: 0.7 }], [{ lora: copy, scale: 0.7 }]];
    expect(stackLoras(targets, apart, maxRank).find((f) => f.name === conv.down_input)!.dims[0]).toBe(2);
    const a = await unet(same);
    const b = await unet(apart);
    expect(maxDiff(a, b)).toBeLessThan(1e-5);
    expect(maxDiff(a, await unet([[]]).then((x) => Float32Array.from([...x, ...x])))).toBeGreaterThan(1e-4);
  });

  it("refuses stacks above the model's rank and files for other layers", () => {
    const many = Array.from({ length: 200 }, () => ({ lora: kohya, scale: 1 }));
    expect(() => stackLoras(targets, [many], maxRank)).toThrow(/above the model's maximum/);
    expect(() => parseLora(new TextEncoder().encode("nope"), targets, maxRank)).toThrow(LoraError);
  });
});
