import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { mapLoraKeys, kohyaPrefix } from "../src/addons/lora-keys.ts";
import { encodeSafetensors, headerByteLength, parseHeader, readFloatTensor, SafetensorsError } from "../src/addons/safetensors.ts";
import { ModelManifest } from "../src/pipeline/manifest.ts";

const bundle = join(import.meta.dirname, "../zoo/models/tiny-shapes-random");
const manifest = ModelManifest.parse(JSON.parse(readFileSync(join(bundle, "manifest.json"), "utf8")));
const targets = manifest.lora!.targets;

function headerWith(json: string, dataBytes = 0): Uint8Array {
  const h = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + h.byteLength + dataBytes);
  new DataView(out.buffer).setBigUint64(0, BigInt(h.byteLength), true);
  out.set(h, 8);
  return out;
}

describe("safetensors, parsed strictly", () => {
  it("round-trips tensors, with a zero-copy view for aligned F32", () => {
    const data = Float32Array.from([1, -2.5, 3, 4, 5, 6]);
    const file = encodeSafetensors({ w: { shape: [2, 3], data }, b: { shape: [1], data: Float32Array.from([7]) } }, { format: "pt" });
    const h = parseHeader(file, file.byteLength);
    expect(h.metadata).toEqual({ format: "pt" });
    expect(h.tensors.get("w")).toMatchObject({ dtype: "F32", shape: [2, 3] });
    const w = readFloatTensor(file, h, "w");
    expect([...w]).toEqual([...data]);
    expect(w.buffer).toBe(file.buffer);
  });

  it("converts F16 and BF16", () => {
    // F16 1.0 = 0x3c00, -2.0 = 0xc000; BF16 1.5 = 0x3fc0.
    const json = JSON.stringify({ h: { dtype: "F16", shape: [2], data_offsets: [0, 4] }, b: { dtype: "BF16", shape: [1], data_offsets: [4, 6] } });
    const file = headerWith(json, 6);
    const view = new DataView(file.buffer);
    const base = 8 + json.length;
    view.setUint16(base, 0x3c00, true);
    view.setUint16(base + 2, 0xc000, true);
    view.setUint16(base + 4, 0x3fc0, true);
    const h = parseHeader(file, file.byteLength);
    expect([...readFloatTensor(file, h, "h")]).toEqual([1, -2]);
    expect([...readFloatTensor(file, h, "b")]).toEqual([1.5]);
  });

  const hostile: Array<[string, () => Uint8Array, RegExp]> = [
    ["a file shorter than the length prefix", () => new Uint8Array(5), /shorter/],
    ["a giant header length", () => { const f = new Uint8Array(16); new DataView(f.buffer).setBigUint64(0, 10n ** 12n, true); return f; }, /exceeds/],
    ["a header longer than the file (truncated)", () => headerWith('{"a":1}').subarray(0, 10), /truncated/],
    ["a header that is not JSON", () => headerWith("{not json"), /JSON/],
    ["an unknown dtype", () => headerWith(JSON.stringify({ w: { dtype: "F12", shape: [1], data_offsets: [0, 4] } }), 4), /unknown dtype/],
    ["a size that disagrees with the shape", () => headerWith(JSON.stringify({ w: { dtype: "F32", shape: [2], data_offsets: [0, 4] } }), 4), /expected 8/],
    ["overlapping tensors", () => headerWith(JSON.stringify({ a: { dtype: "F32", shape: [2], data_offsets: [0, 8] }, b: { dtype: "F32", shape: [1], data_offsets: [4, 8] } }), 8), /overlaps/],
    ["a gap in the data", () => headerWith(JSON.stringify({ a: { dtype: "F32", shape: [1], data_offsets: [4, 8] } }), 8), /gap/],
    ["trailing bytes", () => headerWith(JSON.stringify({ a: { dtype: "F32", shape: [1], data_offsets: [0, 4] } }), 12), /trailing/],
    ["offsets past the end (truncated data)", () => headerWith(JSON.stringify({ a: { dtype: "F32", shape: [4], data_offsets: [0, 16] } }), 8), /truncated/],
    ["negative shapes", () => headerWith(JSON.stringify({ a: { dtype: "F32", shape: [-1], data_offsets: [0, 4] } }), 4), /shape/],
    ["non-string metadata", () => headerWith(JSON.stringify({ __metadata__: { a: 1 } })), /metadata/],
  ];
  for (const [what, make, message] of hostile) {
    it(`refuses ${what}`, () => {
      const file = make();
      expect(() => parseHeader(file, file.byteLength)).toThrow(SafetensorsError);
      expect(() => parseHeader(file, file.byteLength)).toThrow(message);
    });
  }

  it("refuses NaN and Inf weights", () => {
    const file = encodeSafetensors({ w: { shape: [3], data: Float32Array.from([1, Number.NaN, 2]) } });
    const h = parseHeader(file, file.byteLength);
    expect(() => readFloatTensor(file, h, "w")).toThrow(/non-finite value at element 1/);
  });

  it("needs only the head of the file for the header (range reads)", () => {
    const file = encodeSafetensors({ w: { shape: [1000], data: new Float32Array(1000) } });
    const n = headerByteLength(file.subarray(0, 8));
    expect(n).toBeLessThan(200);
    expect(parseHeader(file.subarray(0, n), file.byteLength).tensors.get("w")!.shape).toEqual([1000]);
  });
});

describe("LoRA keys onto the model's targets", () => {
  it("maps the zoo's kohya and PEFT files onto the same modules", () => {
    const read = (name: string) => {
      const file = new Uint8Array(readFileSync(join(bundle, "addons", name)));
      return parseHeader(file, file.byteLength);
    };
    const kohya = mapLoraKeys(read("random-lora-kohya.safetensors").tensors.values(), targets, manifest.lora!.max_rank);
    const peft = mapLoraKeys(read("random-lora-peft.safetensors").tensors.values(), targets, manifest.lora!.max_rank);
    expect(kohya.errors).toEqual([]);
    expect(peft.errors).toEqual([]);
    expect(kohya.layers.length).toBeGreaterThan(0);
    expect(kohya.layers.map((l) => l.module).sort()).toEqual(peft.layers.map((l) => l.module).sort());
    expect(kohya.layers.every((l) => l.convention === "kohya" && l.downKey.startsWith(kohyaPrefix(l.module)))).toBe(true);
  });

  const t = { module: "down_blocks.1.attentions.0.to_q", in_features: 8, out_features: 6 };
  const info = (name: string, shape: number[]) => ({ name, dtype: "F32" as const, shape, begin: 0, end: 0 });
  const k = kohyaPrefix(t.module);

  it("converts the model's module names, never parsing underscores back", () => {
    // "down_blocks" has an underscore of its own: a parser splitting on "_" would get the path wrong.
    const m = mapLoraKeys([info(`${k}.lora_down.weight`, [4, 8]), info(`${k}.lora_up.weight`, [6, 4]), info(`${k}.alpha`, [])], [t], 16);
    expect(m.errors).toEqual([]);
    expect(m.layers[0]).toMatchObject({ module: t.module, rank: 4, alphaKey: `${k}.alpha` });
    const peft = mapLoraKeys([info(`unet.${t.module}.lora_A.weight`, [2, 8]), info(`unet.${t.module}.lora_B.weight`, [6, 2])], [t], 16);
    expect(peft.layers[0]).toMatchObject({ module: t.module, rank: 2, convention: "peft" });
  });

  it("maps LoCon keys onto 3×3 convolution targets and refuses kernels that do not fit", () => {
    const c = { module: "down_blocks.0.res.conv1", kind: "conv3x3" as const, in_features: 8, out_features: 6 };
    const kc = kohyaPrefix(c.module);
    const locon = mapLoraKeys([info(`${kc}.lora_down.weight`, [4, 8, 3, 3]), info(`${kc}.lora_up.weight`, [6, 4, 1, 1]), info(`${kc}.alpha`, [])], [c], 16);
    expect(locon.errors).toEqual([]);
    expect(locon.layers[0]).toMatchObject({ module: c.module, rank: 4, inFeatures: 8, outFeatures: 6 });
    const peft = mapLoraKeys([info(`unet.${c.module}.lora_A.weight`, [2, 8, 3, 3]), info(`unet.${c.module}.lora_B.weight`, [6, 2, 1, 1])], [c], 16);
    expect(peft.layers[0]).toMatchObject({ rank: 2, inFeatures: 8, convention: "peft" });
    // A plain matrix for a convolution, or a 3×3 kernel for a linear layer, is refused with the shape it needs.
    const flat = mapLoraKeys([info(`${kc}.lora_down.weight`, [4, 8]), info(`${kc}.lora_up.weight`, [6, 4])], [c], 16);
    expect(flat.errors.join("\n")).toContain("expected [rank, 8, 3, 3] (module 'down_blocks.0.res.conv1' is a 3×3 convolution)");
    const kernelOnLinear = mapLoraKeys([info(`${k}.lora_down.weight`, [4, 8, 3, 3]), info(`${k}.lora_up.weight`, [6, 4])], [t], 16);
    expect(kernelOnLinear.errors.join("\n")).toContain("expected [rank, 8]");
    const wrongKernel = mapLoraKeys([info(`${kc}.lora_down.weight`, [4, 8, 5, 5]), info(`${kc}.lora_up.weight`, [6, 4, 1, 1])], [c], 16);
    expect(wrongKernel.errors).toHaveLength(1);
  });

  it("names every key that cannot be used", () => {
    const bad = mapLoraKeys(
      [
        info("lora_unet_no_such_layer.lora_down.weight", [4, 8]),
        info("lora_te_text_model_encoder.lora_down.weight", [4, 8]),
        info(`${k}.lora_down.weight`, [32, 8]),
        info(`${k}.lora_up.weight`, [7, 32]),
        info("model.weight", [3]),
      ],
      [t],
      16,
    );
    const text = bad.errors.join("\n");
    expect(text).toContain("'lora_unet_no_such_layer.lora_down.weight' matches no LoRA target");
    expect(text).toContain("adapts the text encoder");
    expect(text).toContain("rank 32, above this model's maximum of 16");
    expect(text).toContain("has 7 output features");
    expect(text).toContain("'model.weight' is neither");
    const half = mapLoraKeys([info(`${k}.lora_down.weight`, [4, 8])], [t], 16);
    expect(half.errors[0]).toMatch(/no up weight/);
  });
});
