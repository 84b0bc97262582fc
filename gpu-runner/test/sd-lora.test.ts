/**
 * LoRAs on imported Stable Diffusion exports (gpu-runner/test/fixtures/sd): the graph's LoRA-able layers found from
 * node names, kohya / PEFT keys mapped onto them, refusals, and both serving modes, merged weights and graph branch
 * inputs, against diffusers' own `load_lora_weights` runs (reference/<case>.safetensors) at the component level:
 * text-encoder states, and each recorded U-Net call (its inputs as diffusers gave them, its output).
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import * as ort from "onnxruntime-node";
import { describe, expect, it } from "vitest";
import { graphLoraTargets, type GraphLoraTarget } from "@imagegen/formats/lora-targets";
import { mapLoraKeys } from "@imagegen/formats/lora-keys";
import {
  f16ToF32,
  f32ToF16,
  parseHeader,
  readFloatTensor,
  type SafetensorsHeader,
} from "@imagegen/formats/safetensors";
import { LoraError, parseLora, stackLoras, type LoraUse } from "../src/addons/lora.ts";
import { externalDataFiles, mergeLoraFiles } from "../src/addons/merge.ts";
import { addLoraBranches, manifestTarget } from "../src/onnx/lora-branches.ts";
import { importLora } from "../src/addons/lora-import.ts";
import { LoraSpec } from "@imagegen/formats/manifest";

const FIXTURES = join(import.meta.dirname, "fixtures/sd");
const MAX_RANK = 64;

interface Reference {
  file: Uint8Array;
  header: SafetensorsHeader;
  settings: { loras: { file: string; scale: number }[] };
}

function reference(family: string, name: string): Reference {
  const file = new Uint8Array(readFileSync(join(FIXTURES, family, "reference", `${name}.safetensors`)));
  const header = parseHeader(file, file.byteLength);
  return { file, header, settings: JSON.parse(header.metadata.settings!) };
}
const f32 = (r: Reference, name: string) => readFloatTensor(r.file, r.header, name);
const dims = (r: Reference, name: string) => r.header.tensors.get(name)!.shape;
function i64(r: Reference, name: string): BigInt64Array {
  const t = r.header.tensors.get(name)!;
  return new BigInt64Array(r.file.slice(r.header.dataOffset + t.begin, r.header.dataOffset + t.end).buffer);
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/** One component of an export: its bytes, external data, and LoRA-able layers. */
interface Part {
  component: string;
  model: Uint8Array;
  external: Map<string, Uint8Array>;
  targets: GraphLoraTarget[];
}

function part(family: string, component: string): Part {
  const dir = join(FIXTURES, family, component);
  const model = new Uint8Array(readFileSync(join(dir, "model.onnx")));
  const external = new Map(externalDataFiles(model).map((loc) => [loc, new Uint8Array(readFileSync(join(dir, loc)))]));
  return { component, model, external, targets: graphLoraTargets(model, component) };
}

const ENCODERS: Record<string, string[]> = { sdxl: ["text_encoder", "text_encoder_2"] };
/** turbo is an fp16 export (float16 inputs and outputs, weights in model.onnx_data). */
const HALF = new Set(["turbo"]);

function floats(family: string, data: Float32Array, d: readonly number[]): ort.Tensor {
  return HALF.has(family)
    ? new ort.Tensor("float16", Uint16Array.from(data, f32ToF16), d)
    : new ort.Tensor("float32", data, d);
}
function toF32(t: ort.Tensor): Float32Array {
  return t.type === "float16" ? Float32Array.from(t.data as Uint16Array, f16ToF32) : (t.data as Float32Array);
}
const encodersOf = (family: string) => ENCODERS[family] ?? ["text_encoder"];

function exportOf(family: string): Part[] {
  return [...encodersOf(family), "unet"].map((c) => part(family, c));
}

const allTargets = (parts: Part[]) => parts.flatMap((p) => p.targets.map((t) => manifestTarget(t)));
const loraFile = (family: string, file: string) => new Uint8Array(readFileSync(join(FIXTURES, family, "loras", file)));

function usesFor(family: string, ref: Reference, parts: Part[]): LoraUse[] {
  return ref.settings.loras.map((l) => ({
    lora: parseLora(loraFile(family, l.file), allTargets(parts), MAX_RANK),
    scale: l.scale,
  }));
}

type Mode = "merged" | "branch";

/** Sessions for every part, with the uses' LoRAs merged into the weights or fed as branch inputs. */
async function sessions(parts: Part[], uses: LoraUse[], mode: Mode) {
  const out: Record<
    string,
    {
      session: ort.InferenceSession;
      feeds: (batch: number) => Record<string, ort.Tensor>;
      use: (next: LoraUse[]) => void;
    }
  > = {};
  let rankOffset = 0;
  for (const p of parts) {
    const targets = p.targets.map((t) => manifestTarget(t));
    if (mode === "merged") {
      const merged = mergeLoraFiles({ model: p.model, external: p.external }, p.component, targets, uses);
      const externalData = [...p.external.keys()].map((path) => ({
        path,
        data: merged.external.get(path) ?? p.external.get(path)!,
      }));
      const session = await ort.InferenceSession.create(merged.model, { externalData });
      out[p.component] = { session, feeds: () => ({}), use: () => expect.fail("a merged session holds one LoRA set") };
    } else {
      const rewritten = addLoraBranches(p.model, p.component, p.targets, rankOffset);
      rankOffset += p.targets.length;
      const externalData = [...p.external].map(([path, data]) => ({ path, data }));
      const session = await ort.InferenceSession.create(rewritten.model, { externalData });
      let current = uses;
      out[p.component] = {
        session,
        use: (next) => (current = next),
        feeds: (batch) =>
          Object.fromEntries(
            stackLoras(
              rewritten.targets,
              Array.from({ length: batch }, () => current),
              MAX_RANK,
            ).map((f) => [f.name, new ort.Tensor("float32", f.data, f.dims)]),
          ),
      };
    }
  }
  return out;
}

/** Text states as the U-Net gets them ([negative; positive] under CFG), from the reference's token ids. */
async function textStates(
  family: string,
  ref: Reference,
  s: Awaited<ReturnType<typeof sessions>>,
): Promise<Float32Array> {
  const cfg = dims(ref, "unet.encoder_hidden_states")[0] === 2;
  const perEncoder: { data: Float32Array; width: number }[] = [];
  for (const [i, component] of encodersOf(family).entries()) {
    const suffix = i === 0 ? "" : `_${i + 1}`;
    const rows = [...(cfg ? [i64(ref, `negative_input_ids${suffix}`)] : []), i64(ref, `input_ids${suffix}`)];
    const seq = rows[0]!.length;
    const ids = new BigInt64Array(rows.length * seq);
    rows.forEach((r, b) => ids.set(r, b * seq));
    const { session, feeds } = s[component]!;
    const out = await session.run({
      input_ids: new ort.Tensor("int64", ids, [rows.length, seq]),
      ...feeds(rows.length),
    });
    // SDXL conditions on the penultimate layer of both encoders (hidden_states.{L-1}); SD 1/2 on the last state.
    const layers = session.outputNames
      .filter((n) => n.startsWith("hidden_states."))
      .map((n) => Number(n.split(".")[1]));
    const name = family === "sdxl" ? `hidden_states.${Math.max(...layers) - 1}` : "last_hidden_state";
    const t = out[name]!;
    perEncoder.push({ data: toF32(t), width: t.dims[2]! });
  }
  if (perEncoder.length === 1) return perEncoder[0]!.data;
  const width = perEncoder.reduce((n, e) => n + e.width, 0);
  const rows = perEncoder[0]!.data.length / perEncoder[0]!.width;
  const joined = new Float32Array(rows * width);
  for (let r = 0; r < rows; r++) {
    let at = r * width;
    for (const e of perEncoder) {
      joined.set(e.data.subarray(r * e.width, (r + 1) * e.width), at);
      at += e.width;
    }
  }
  return joined;
}

/** The largest |diff| over every recorded U-Net call, fed diffusers' own inputs for that call. */
async function unetCalls(family: string, ref: Reference, s: Awaited<ReturnType<typeof sessions>>): Promise<number> {
  const { session, feeds } = s.unet!;
  let worst = 0;
  for (let i = 0; ref.header.tensors.has(`unet.sample.${i}`); i++) {
    const sampleDims = dims(ref, `unet.sample.${i}`);
    const batch = sampleDims[0]!;
    const input: Record<string, ort.Tensor> = {
      sample: floats(family, f32(ref, `unet.sample.${i}`), sampleDims),
      timestep: floats(family, f32(ref, `unet.timestep.${i}`).slice(0, 1), []),
      encoder_hidden_states: floats(
        family,
        f32(ref, "unet.encoder_hidden_states"),
        dims(ref, "unet.encoder_hidden_states"),
      ),
      ...feeds(batch),
    };
    for (const extra of ["timestep_cond", "text_embeds", "time_ids"]) {
      if (ref.header.tensors.has(`unet.${extra}`))
        input[extra] = floats(family, f32(ref, `unet.${extra}`), dims(ref, `unet.${extra}`));
    }
    const out = await session.run(input);
    worst = Math.max(worst, maxAbsDiff(toF32(out.out_sample!), f32(ref, `unet.out_sample.${i}`)));
  }
  return worst;
}

describe("LoRA-able layers of an Optimum export", () => {
  it("finds every Linear and Conv of the U-Net and text encoder with its weight initializer and layout", () => {
    const unet = part("sd15", "unet").targets;
    const q = unet.find((t) => t.module === "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")!;
    // The exporter's anonymous transposed MatMul weight, found by following the node's input.
    expect(q).toMatchObject({
      kind: "linear",
      weight_layout: "in_out",
      in_features: 8,
      out_features: 8,
      nodes: ["/down_blocks.0/attentions.0/transformer_blocks.0/attn1/to_q/MatMul"],
    });
    expect(q.weight).toMatch(/^onnx::MatMul_/);
    expect(unet.find((t) => t.module === "down_blocks.0.resnets.0.time_emb_proj")).toMatchObject({
      kind: "linear",
      weight_layout: "out_in",
      in_features: 32,
      out_features: 8,
    });
    expect(unet.find((t) => t.module === "down_blocks.0.attentions.0.proj_in")).toMatchObject({
      kind: "conv1x1",
      branchable: true,
    });
    expect(unet.find((t) => t.module === "down_blocks.0.resnets.0.conv1")).toMatchObject({
      kind: "conv3x3",
      in_features: 8,
      out_features: 8,
    });
    expect(unet.find((t) => t.module === "down_blocks.0.attentions.0.transformer_blocks.0.attn1")).toBeUndefined(); // Q·Kᵀ has no weight
    const text = part("sd15", "text_encoder").targets;
    expect(text.find((t) => t.module === "text_encoder.text_model.encoder.layers.0.mlp.fc1")).toMatchObject({
      in_features: 32,
      out_features: 37,
      weight_layout: "in_out",
    });
    // fp16 export with external data: the weights lie in model.onnx_data.
    const turbo = part("turbo", "unet");
    expect(turbo.targets.find((t) => t.module.endsWith("attn1.to_q"))!.dtype).toBe("float16");
    expect(turbo.external.size).toBe(1);
  });

  it("maps every key of the fixture LoRAs (kohya U-Net + text encoder, SDXL te1/te2, PEFT, LCM-LoRA with 3×3 convs)", () => {
    const cases: [string, string][] = [
      ["sd15", "style_kohya.safetensors"],
      ["sd15", "lcm_lora_kohya.safetensors"],
      ["sd15", "subject_peft.safetensors"],
      ["sd2v", "style_kohya.safetensors"],
      ["lcm", "style_kohya.safetensors"],
      ["sdxl", "style_kohya.safetensors"],
      ["turbo", "style_kohya.safetensors"],
    ];
    for (const [family, file] of cases) {
      const bytes = loraFile(family, file);
      const header = parseHeader(bytes, bytes.byteLength);
      const m = mapLoraKeys(header.tensors.values(), allTargets(exportOf(family)), MAX_RANK);
      expect(m.errors, `${family}/${file}`).toEqual([]);
      expect(m.mapped, `${family}/${file}`).toBe(header.tensors.size);
      expect(m.total).toBe(header.tensors.size);
    }
  });
});

describe("importLora: the manifest's lora spec and the rewritten graphs", () => {
  it("branch mode declares every target's inputs once, rank axes numbered across components; merge mode names weights", async () => {
    const models = Object.fromEntries(exportOf("sdxl").map((p) => [p.component, p.model]));
    const branch = importLora(models, "branch")!;
    expect(LoraSpec.parse(branch.spec)).toEqual(branch.spec);
    expect([...branch.rewritten.keys()]).toEqual(["text_encoder", "text_encoder_2", "unet"]);
    const inputs = [...branch.rewritten.values()].flatMap((r) => r.inputs);
    expect(inputs).toHaveLength(2 * branch.spec.targets.length);
    expect(new Set(inputs.filter((i) => i.name.endsWith(".down")).map((i) => i.shape[1])).size).toBe(
      branch.spec.targets.length,
    );
    const unet = await ort.InferenceSession.create(branch.rewritten.get("unet")!.model);
    for (const t of branch.spec.targets.filter((t) => t.components[0] === "unet"))
      expect(unet.inputNames).toContain(t.down_input);
    const merge = importLora(models, "merge")!;
    expect(merge.rewritten.size).toBe(0);
    expect(merge.spec.targets.every((t) => t.weight && t.down_input === undefined)).toBe(true);
    expect(merge.spec.targets.map((t) => t.module)).toEqual(branch.spec.targets.map((t) => t.module));
  });
});

describe("LoRA refusals on imported models", () => {
  const sd15 = allTargets(exportOf("sd15"));

  it("refuses an SDXL LoRA on SD1.5, naming the mismatch", () => {
    const bytes = loraFile("sdxl", "style_kohya.safetensors");
    const err = (() => {
      try {
        parseLora(bytes, sd15, MAX_RANK);
      } catch (e) {
        return e as Error;
      }
    })();
    expect(err).toBeInstanceOf(LoraError);
    // The architecture first, then the shapes that do not fit, naming keys and sizes.
    expect(err!.message).toMatch(
      /^\d+ of 354 keys map onto this model: 54 keys \(e\.g\. 'lora_te2_text_model_encoder_layers_0_mlp_fc1\.alpha'\) are for a model with two text encoders/,
    );
    expect(err!.message).toMatch(/and \d+ more$/);
    // allow_partial does not let another architecture through.
    expect(() => parseLora(bytes, sd15, MAX_RANK, { allowPartial: true })).toThrow(/two text encoders/);
  });

  it("refuses a key for a module the model lacks unless allow_partial, and reports mapped / total", async () => {
    const { encodeSafetensors } = await import("@imagegen/formats/safetensors");
    const style = loraFile("sd15", "style_kohya.safetensors");
    const header = parseHeader(style, style.byteLength);
    const tensors: Record<string, { shape: number[]; data: Float32Array }> = {};
    for (const t of header.tensors.values())
      tensors[t.name] = { shape: t.shape, data: readFloatTensor(style, header, t.name).slice() };
    tensors["lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight"] = {
      shape: [4, 8],
      data: new Float32Array(32),
    };
    const file = encodeSafetensors(tensors);
    expect(() => parseLora(file, sd15, MAX_RANK)).toThrow(
      /'lora_unet_down_blocks_7_attentions_0_proj_in\.lora_down\.weight' matches no LoRA target/,
    );
    const partial = parseLora(file, sd15, MAX_RANK, { allowPartial: true });
    expect(partial.report).toEqual({
      mapped: header.tensors.size,
      total: header.tensors.size + 1,
      unmapped: ["lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight"],
    });
    // A pair whose shapes do not fit the layer is refused with the shapes, allow_partial or not.
    const q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";
    tensors[`${q}.lora_down.weight`] = { shape: [4, 16], data: new Float32Array(64) };
    expect(() => parseLora(encodeSafetensors(tensors), sd15, MAX_RANK, { allowPartial: true })).toThrow(
      new RegExp(`'${q}\\.lora_down\\.weight' has 16 input features; module '.*to_q' has 8`),
    );
  });
});

/**
 * Tolerances: diffusers (PyTorch fp32) against ONNX Runtime fp32 on the same inputs; optimum's own ORT pipeline
 * reaches ~1e-6 on text states and ~5e-5 on final latents without LoRA (fixtures/sd/REFERENCES.md).
 */
const TEXT_TOL = 1e-5;
const UNET_TOL = 1e-5;
/** fp16 turbo against fp32 PyTorch: optimum's own pipeline is 2e-3 off on text states without LoRA. */
const HALF_TOL = { text: 8e-3, unet: 5e-3 };

const CASES: [family: string, reference: string][] = [
  ["sd15", "style_1.0"],
  ["sd15", "style_0.5"],
  ["sd15", "subject_peft_1.0"],
  ["sd15", "lcm_lora_style"],
  ["sd2v", "style_1.0"],
  ["lcm", "style_1.0"],
  ["sdxl", "style_1.0"],
  ["turbo", "style_1.0"],
];

describe.each(CASES)("%s %s against diffusers' load_lora_weights", (family, name) => {
  for (const mode of ["merged", "branch"] as const) {
    it(`${mode}: text states and every U-Net call match`, async () => {
      const parts = exportOf(family);
      const ref = reference(family, name);
      const uses = usesFor(family, ref, parts);
      const s = await sessions(parts, uses, mode);
      const text = maxAbsDiff(await textStates(family, ref, s), f32(ref, "unet.encoder_hidden_states"));
      const unet = await unetCalls(family, ref, s);
      console.log(`${family}/${name} ${mode}: text ${text.toExponential(2)} unet ${unet.toExponential(2)}`);
      expect(text).toBeLessThan(HALF.has(family) ? HALF_TOL.text : TEXT_TOL);
      expect(unet).toBeLessThan(HALF.has(family) ? HALF_TOL.unet : UNET_TOL);
    });
  }
});

describe("branch mode switches LoRA sets per run, without a new session", () => {
  it("one rewritten export serves the base, style and PEFT subject references in turn", async () => {
    const parts = exportOf("sd15");
    const s = await sessions(parts, [], "branch"); // rank-0 branches: the base model
    const style = reference("sd15", "style_1.0");
    // Without its LoRA the style reference is far off: the comparisons below can fail.
    expect(maxAbsDiff(await textStates("sd15", style, s), f32(style, "unet.encoder_hidden_states"))).toBeGreaterThan(
      1000 * TEXT_TOL,
    );
    for (const name of ["base", "style_1.0", "subject_peft_1.0", "base"]) {
      const ref = reference("sd15", name);
      const uses = usesFor("sd15", ref, parts);
      for (const c of Object.values(s)) c.use(uses);
      expect(maxAbsDiff(await textStates("sd15", ref, s), f32(ref, "unet.encoder_hidden_states")), name).toBeLessThan(
        TEXT_TOL,
      );
      expect(await unetCalls("sd15", ref, s), name).toBeLessThan(UNET_TOL);
    }
  });
});
