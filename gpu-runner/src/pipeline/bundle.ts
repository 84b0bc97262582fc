/**
 * The bundle loader: reads `manifest.json`, validates it with the zod contract, opens one ONNX Runtime session
 * per component and checks every declared tensor against what the session really takes and gives. A bundle that
 * lies fails here, with every mismatch named, instead of failing mid-generation with an ONNX Runtime message.
 */
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import * as ort from "onnxruntime-node";
import { z } from "zod";
import { describeIssues, RunnerError } from "../errors.ts";
import { buildModel } from "../onnx/builder.ts";
import { ModelManifest, type ComponentSpec, type TensorSpec } from "@imagegen/formats/manifest";
import { ClipTokenizer, WordTokenizer, type PromptTokenizer } from "../tokenizers/index.ts";
import { toDtype, toFloat32 } from "./tensors.ts";

/** Inputs and outputs the pipeline addresses by name, as the Stable Diffusion ONNX export names them. */
export const UNET_IO = {
  sample: "sample",
  timestep: "timestep",
  encoderHiddenStates: "encoder_hidden_states",
} as const;

export type ComponentName = keyof ModelManifest["components"];

export class BundleError extends RunnerError {
  override readonly name = "BundleError";
  readonly problems: readonly string[];

  constructor(dir: string, problems: readonly string[]) {
    super("bundle_invalid", `bundle ${dir} is invalid:\n  - ${problems.join("\n  - ")}`);
    this.problems = problems;
  }
}

/** How sessions are opened: one declaration, validated where a worker receives it. */
export const SessionConfigSchema = z.object({
  /** ONNX Runtime execution providers in order of preference: ["cpu"] here, ["cuda", "cpu"] in the GPU container. */
  executionProviders: z.array(z.enum(["cpu", "cuda", "dml", "coreml"])).min(1),
  /** Threads per session for one operator; 0 lets ONNX Runtime choose. */
  intraOpNumThreads: z.number().int().nonnegative(),
  /**
   * Whether idle intra-op threads spin waiting for work. Off by default: on a CPU shared by several workers (and
   * other tenants of the machine) spinning threads take cycles from the sessions that have work (bench/REPORT.md).
   */
  allowSpinning: z.boolean().default(false),
});
export type SessionConfig = z.input<typeof SessionConfigSchema>;

export const DEFAULT_SESSION_CONFIG: SessionConfig = {
  executionProviders: ["cpu"],
  intraOpNumThreads: 1,
  allowSpinning: false,
};

export type Feeds = Record<string, ort.Tensor>;

/** The execution providers asked for cannot run here (a CUDA build missing, no device): the runner's setup, not the bundle. */
export class ExecutionProviderError extends RunnerError {
  override readonly name = "ExecutionProviderError";
  constructor(message: string, options?: ErrorOptions) {
    super("execution_provider_unavailable", message, options);
  }
}

const checkedProviders = new Map<string, Promise<void>>();

/** Opens a one-node session with the providers once per process, so a missing provider is named as such. */
function checkExecutionProviders(config: SessionConfig): Promise<void> {
  const key = config.executionProviders.join(",");
  let check = checkedProviders.get(key);
  if (check === undefined) {
    const probe = buildModel({
      inputs: [{ name: "x", dtype: "float32", shape: [1] }],
      outputs: [{ name: "y", dtype: "float32", shape: [1] }],
      nodes: [{ op: "Identity", inputs: ["x"], outputs: ["y"] }],
    });
    check = ort.InferenceSession.create(probe, {
      executionProviders: [...config.executionProviders] as ort.InferenceSession.ExecutionProviderConfig[],
      logSeverityLevel: 4, // the failure is reported below, once, in words
    }).then(
      (session) => session.release(),
      (err: Error) => {
        checkedProviders.delete(key);
        throw new ExecutionProviderError(`execution providers [${key}] are not available here: ${err.message}`);
      },
    );
    checkedProviders.set(key, check);
  }
  return check;
}

/** One ONNX session with its declared contract, counting its runs and time so tests and the bench can see them. */
export class Component {
  readonly name: ComponentName;
  readonly spec: ComponentSpec;
  readonly session: ort.InferenceSession;
  /**
   * Inputs the session takes beyond the declared ones, the same on every run: a folded LoRA set's merged weights
   * (addons/fold.ts), computed on the first run that needs them.
   */
  readonly extraFeeds: (() => Promise<Feeds>) | undefined;
  runs = 0;
  totalMs = 0;

  constructor(
    name: ComponentName,
    spec: ComponentSpec,
    session: ort.InferenceSession,
    extraFeeds?: () => Promise<Feeds>,
  ) {
    this.name = name;
    this.spec = spec;
    this.session = session;
    this.extraFeeds = extraFeeds;
  }

  input(name: string): TensorSpec | undefined {
    return this.spec.inputs.find((t) => t.name === name);
  }

  /** Runs with the declared inputs picked from `available` (extra entries are ignored). */
  async run(available: Feeds): Promise<Feeds> {
    const feeds: Feeds = {};
    for (const input of this.spec.inputs) {
      const tensor = available[input.name];
      if (tensor === undefined) throw new Error(`${this.name}: no value for input "${input.name}"`);
      feeds[input.name] = toDtype(tensor, input.dtype);
    }
    const start = performance.now();
    if (this.extraFeeds) Object.assign(feeds, await this.extraFeeds());
    const out = (await this.session.run(feeds)) as Feeds;
    this.totalMs += performance.now() - start;
    this.runs++;
    for (const output of this.spec.outputs) {
      if (output.dtype === "float16" && out[output.name]) out[output.name] = toFloat32(out[output.name]!);
    }
    return out;
  }

  resetCounters(): void {
    this.runs = 0;
    this.totalMs = 0;
  }
}

export interface Bundle {
  dir: string;
  manifest: ModelManifest;
  tokenizer: PromptTokenizer;
  /** SDXL's second tokenizer (feeds `text_encoder_2`). */
  tokenizer2?: PromptTokenizer;
  components: Partial<Record<ComponentName, Component>> & Record<"text_encoder" | "unet" | "vae_decoder", Component>;
  /**
   * The U-Net's weights hold this LoRA set (`loraSetKey`, merged by addons/hot-merge.ts): its branch inputs stay
   * at rank 0, and only batches of this set may run on it.
   */
  lorasMerged?: string;
  /**
   * With `lorasMerged`: the set's merged weights are fed as inputs of one shared weights-as-inputs session per
   * component (addons/fold.ts), rather than built into a session of their own (addons/hot-merge.ts).
   */
  lorasFolded?: boolean;
  release(): Promise<void>;
}

/** Reads and validates `manifest.json` without opening any session. */
export function readManifest(dir: string): ModelManifest {
  const path = join(dir, "manifest.json");
  if (!existsSync(path)) throw new BundleError(dir, [`manifest.json not found at ${path}`]);
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(path, "utf8"));
  } catch (err) {
    throw new BundleError(dir, [`manifest.json is not valid JSON: ${(err as Error).message}`]);
  }
  const parsed = ModelManifest.safeParse(json);
  if (!parsed.success) {
    throw new BundleError(
      dir,
      describeIssues(parsed.error.issues).map((line) => `manifest.${line}`),
    );
  }
  return parsed.data;
}

/**
 * The word tokenizer's vocabulary lives in the SD layout's `tokenizer/` folder (the manifest names the file); a CLIP
 * tokenizer is a folder the manifest names.
 */
function tokenizerPath(dir: string, spec: ModelManifest["tokenizer"]): string {
  return spec.type === "word" ? join(dir, "tokenizer", spec.vocab) : join(dir, spec.path);
}

/** Loads a manifest's tokenizer and checks a CLIP one against the ids the importer recorded. */
function loadPromptTokenizer(dir: string, spec: ModelManifest["tokenizer"], where: string): PromptTokenizer {
  if (spec.type === "word") return WordTokenizer.fromFile(spec, tokenizerPath(dir, spec));
  const clip = ClipTokenizer.fromDir(tokenizerPath(dir, spec));
  const seen = { max_length: clip.maxLength, pad_id: clip.padId, bos_id: clip.bosId, eos_id: clip.eosId };
  const differ = Object.entries(seen).filter(([k, v]) => spec[k as keyof typeof seen] !== v);
  if (differ.length > 0) {
    throw new BundleError(
      dir,
      differ.map(
        ([k, v]) => `${where}.${k}: the manifest says ${spec[k as keyof typeof seen]}, ${spec.path} gives ${v}`,
      ),
    );
  }
  return clip;
}

/** Problems in the manifest's internal references, found before any ONNX file is opened. */
function checkReferences(dir: string, m: ModelManifest): string[] {
  const problems: string[] = [];
  const components = m.components;
  const unetInputs = new Set(components.unet.inputs.map((t) => t.name));

  if (!m.samplers.includes(m.default_sampler)) {
    problems.push(`default_sampler "${m.default_sampler}" is not among samplers [${m.samplers.join(", ")}]`);
  }
  for (const name of Object.values(UNET_IO)) {
    if (!unetInputs.has(name)) problems.push(`components.unet: has no input "${name}"`);
  }
  const textIds = components.text_encoder.inputs[0];
  if (textIds === undefined || (textIds.dtype !== "int64" && textIds.dtype !== "int32")) {
    problems.push(`components.text_encoder: first input must be int64 or int32 token ids`);
  }
  if (m.guidance.embedding && !unetInputs.has(m.guidance.embedding.input)) {
    problems.push(`guidance.embedding.input "${m.guidance.embedding.input}" is not an input of components.unet`);
  }
  for (const residual of m.controlnet?.residuals ?? []) {
    if (!unetInputs.has(residual))
      problems.push(`controlnet.residuals: "${residual}" is not an input of components.unet`);
  }
  for (const target of m.lora?.targets ?? []) {
    for (const c of target.components) {
      const spec = components[c as ComponentName];
      if (spec === undefined) {
        problems.push(`lora target ${target.module}: component "${c}" is not in components`);
        continue;
      }
      if (m.lora?.mode === "branch") {
        for (const input of [target.down_input, target.up_input]) {
          if (input === undefined)
            problems.push(`lora target ${target.module}: mode "branch" needs down_input and up_input`);
          else if (!spec.inputs.some((t) => t.name === input)) {
            problems.push(`lora target ${target.module}: "${input}" is not an input of components.${c}`);
          }
        }
      }
    }
  }
  if (m.cache) {
    const { head, deep, tail, cached_feature } = m.cache;
    for (const part of [head, deep, tail]) {
      if (components[part as ComponentName] === undefined)
        problems.push(`cache: component "${part}" is not in components`);
    }
    const deepSpec = components[deep as ComponentName];
    const tailSpec = components[tail as ComponentName];
    if (deepSpec && !deepSpec.outputs.some((t) => t.name === cached_feature)) {
      problems.push(`cache.cached_feature "${cached_feature}" is not an output of components.${deep}`);
    }
    if (tailSpec && !tailSpec.inputs.some((t) => t.name === cached_feature)) {
      problems.push(`cache.cached_feature "${cached_feature}" is not an input of components.${tail}`);
    }
  }
  for (const [where, spec] of [
    ["tokenizer", m.tokenizer],
    ["tokenizer_2", m.tokenizer_2],
  ] as const) {
    if (spec === undefined || existsSync(tokenizerPath(dir, spec))) continue;
    problems.push(
      spec.type === "word"
        ? `${where}.vocab: tokenizer/${spec.vocab} not found`
        : `${where}.path: ${spec.path} not found`,
    );
  }
  problems.push(...checkConditioning(m));
  return problems;
}

/** An imported model's conditioning recipe names outputs and inputs its graphs declare. */
function checkConditioning(m: ModelManifest): string[] {
  const tc = m.text_conditioning;
  if (tc === undefined) return [];
  const problems: string[] = [];
  const c = m.components;
  const encoders = [c.text_encoder, c.text_encoder_2];
  const unetInputs = new Set(c.unet.inputs.map((t) => t.name));
  tc.hidden_states.forEach((output, i) => {
    const encoder = encoders[i];
    const name = i === 0 ? "text_encoder" : "text_encoder_2";
    if (encoder === undefined) problems.push(`text_conditioning.hidden_states[${i}]: components.${name} is missing`);
    else if (!encoder.outputs.some((t) => t.name === output))
      problems.push(`text_conditioning.hidden_states[${i}]: "${output}" is not an output of components.${name}`);
  });
  if (tc.hidden_states.length === 2 && m.tokenizer_2 === undefined)
    problems.push(`text_conditioning: two text encoders need tokenizer_2`);
  if (tc.pooled) {
    const encoder = c[tc.pooled.component];
    if (!encoder?.outputs.some((t) => t.name === tc.pooled!.output))
      problems.push(
        `text_conditioning.pooled: "${tc.pooled.output}" is not an output of components.${tc.pooled.component}`,
      );
    if (!unetInputs.has(tc.pooled.unet_input))
      problems.push(`text_conditioning.pooled: "${tc.pooled.unet_input}" is not an input of components.unet`);
  }
  if (tc.time_ids && !unetInputs.has(tc.time_ids.unet_input))
    problems.push(`text_conditioning.time_ids: "${tc.time_ids.unet_input}" is not an input of components.unet`);
  return problems;
}

const DTYPE_OF: Record<string, TensorSpec["dtype"] | undefined> = {
  float32: "float32",
  float16: "float16",
  int64: "int64",
  int32: "int32",
};

/** Compares one declared tensor list against a session's metadata; returns the mismatches. */
export function compareTensors(
  where: string,
  declared: readonly TensorSpec[],
  actual: readonly ort.InferenceSession.ValueMetadata[],
): string[] {
  const problems: string[] = [];
  const byName = new Map(actual.map((m) => [m.name, m]));
  for (const spec of declared) {
    const meta = byName.get(spec.name);
    if (meta === undefined) {
      problems.push(
        `${where} "${spec.name}" is declared but the graph has no such tensor (graph has: ${[...byName.keys()].join(", ")})`,
      );
      continue;
    }
    if (!meta.isTensor) {
      problems.push(`${where} "${spec.name}" is not a tensor in the graph`);
      continue;
    }
    if (DTYPE_OF[meta.type] !== spec.dtype)
      problems.push(`${where} "${spec.name}": declared ${spec.dtype}, graph has ${meta.type}`);
    if (meta.shape.length !== spec.shape.length) {
      problems.push(
        `${where} "${spec.name}": declared rank ${spec.shape.length} [${spec.shape.join(", ")}], graph has rank ${meta.shape.length} [${meta.shape.join(", ")}]`,
      );
      continue;
    }
    spec.shape.forEach((dim, axis) => {
      const real = meta.shape[axis];
      // A dimension the graph leaves dynamic accepts what the manifest fixes; the reverse is a lie that breaks batching.
      if (typeof real === "number" && real >= 0 && real !== dim) {
        problems.push(
          `${where} "${spec.name}": axis ${axis} declared ${JSON.stringify(dim)}, graph fixes it to ${real}`,
        );
      }
    });
  }
  const declaredNames = new Set(declared.map((t) => t.name));
  for (const name of byName.keys()) {
    if (!declaredNames.has(name))
      problems.push(`${where} "${name}" exists in the graph but is not declared in the manifest`);
  }
  return problems;
}

function sha256(path: string): string {
  return createHash("sha256").update(readFileSync(path)).digest("hex");
}

/** ONNX Runtime options for a session config: every session the runner creates (models, ControlNets, merged U-Nets). */
export function sessionOptions(config: SessionConfig): ort.InferenceSession.SessionOptions {
  return {
    executionProviders: [...config.executionProviders] as ort.InferenceSession.ExecutionProviderConfig[],
    intraOpNumThreads: config.intraOpNumThreads,
    interOpNumThreads: 1,
    graphOptimizationLevel: "all",
    extra: { session: { intra_op: { allow_spinning: config.allowSpinning ? "1" : "0" } } },
  };
}

/**
 * Loads a model bundle: manifest, tokenizer and one session per component, all checked.
 *
 * @example
 * const bundle = await loadBundle("gpu-runner/models/tiny-shapes");
 * console.log(bundle.manifest.samplers);
 */
export async function loadBundle(dir: string, config: SessionConfig = DEFAULT_SESSION_CONFIG): Promise<Bundle> {
  const manifest = readManifest(dir);
  const problems = checkReferences(dir, manifest);
  const entries = Object.entries(manifest.components) as [ComponentName, ComponentSpec | undefined][];
  let filesPresent = true;
  for (const [name, spec] of entries) {
    if (spec === undefined) continue;
    const path = join(dir, spec.path);
    if (!existsSync(path)) {
      problems.push(`components.${name}: file ${spec.path} not found`);
      filesPresent = false;
    } else if (spec.sha256 !== undefined && sha256(path) !== spec.sha256) {
      problems.push(`components.${name}: ${spec.path} does not match its sha256 ${spec.sha256}`);
      filesPresent = false;
    }
  }
  // Reference problems do not stop here: the sessions' own mismatches are reported with them, all at once.
  if (!filesPresent) throw new BundleError(dir, problems);
  // A tokenizer that does not load is one more problem, reported with the sessions' (a missing folder already is one).
  let tokenizers: Pick<Bundle, "tokenizer" | "tokenizer2"> | undefined;
  if (problems.every((p) => !p.startsWith("tokenizer"))) {
    try {
      tokenizers = {
        tokenizer: loadPromptTokenizer(dir, manifest.tokenizer, "tokenizer"),
        ...(manifest.tokenizer_2 ? { tokenizer2: loadPromptTokenizer(dir, manifest.tokenizer_2, "tokenizer_2") } : {}),
      };
    } catch (err) {
      problems.push(...(err instanceof BundleError ? err.problems : [`tokenizer: ${(err as Error).message}`]));
    }
  }
  await checkExecutionProviders(config);

  const options = sessionOptions(config);
  const components: Partial<Record<ComponentName, Component>> = {};
  const release = async () => {
    await Promise.all(Object.values(components).map((c) => c.session.release()));
  };
  try {
    for (const [name, spec] of entries) {
      if (spec === undefined) continue;
      let session: ort.InferenceSession;
      try {
        session = await ort.InferenceSession.create(join(dir, spec.path), options);
      } catch (err) {
        problems.push(`components.${name}: ONNX Runtime cannot load ${spec.path}: ${(err as Error).message}`);
        continue;
      }
      components[name] = new Component(name, spec, session);
      problems.push(
        ...compareTensors(`components.${name} input`, spec.inputs, session.inputMetadata),
        ...compareTensors(`components.${name} output`, spec.outputs, session.outputMetadata),
      );
    }
    if (problems.length > 0 || tokenizers === undefined) throw new BundleError(dir, problems);
  } catch (err) {
    await release();
    throw err;
  }

  return {
    dir,
    manifest,
    ...tokenizers,
    components: components as Bundle["components"],
    release,
  };
}
