/**
 * Imports a Stable Diffusion export, as Optimum writes it (`optimum-cli export onnx --task text-to-image`), into a
 * model bundle: a folder holding `manifest.json` and a link to the export (`export/`, or a copy with `copy`). The
 * manifest is written from the export alone: each graph's inputs and outputs (names, dtypes, shapes), the
 * components' `config.json`, `model_index.json`, the tokenizers and `scheduler/scheduler_config.json`.
 *
 * Recognised: SD 1.x/2.x (epsilon and v-prediction), LCM-distilled U-Nets (`timestep_cond`), few-step models without
 * classifier-free guidance (SD-Turbo: `noCfg`), SDXL (two text encoders, `text_embeds`, `time_ids`); fp16 and fp32.
 * Anything else is refused with every reason at once, and nothing is written: the bundle is built in a temporary
 * folder beside its destination and renamed into place last. The export folder is never written to.
 */
import {
  copyFileSync,
  cpSync,
  existsSync,
  linkSync,
  mkdirSync,
  readFileSync,
  renameSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { basename, join, resolve } from "node:path";
import {
  ModelManifest,
  type ClipTokenizerSpec,
  type ComponentSpec,
  type PredictionType,
  type SamplerName,
  type TensorSpec,
} from "@imagegen/formats/manifest";
import { importLora, type ImportedLora } from "../addons/lora-import.ts";
import { externalDataFiles } from "../addons/merge.ts";
import { samplerFromSchedulerConfig, SCHEDULER_CLASSES, type DiffusersSchedulerConfig } from "../samplers/index.ts";
import { ClipTokenizer } from "../tokenizers/index.ts";
import { readGraphIo, type GraphIo } from "./graph-io.ts";

export interface ImportOptions {
  /** The model's name (default: the export folder's name, lowercased); the bundle is `<out>/<name>`. */
  name?: string;
  /** The models folder the bundle goes into (a runner serves every bundle in it). */
  out: string;
  /** Copy the export into the bundle instead of linking to it (a bundle that travels on its own). */
  copy?: boolean;
  /** Replace a bundle of the same name. */
  force?: boolean;
  /**
   * A few-step model distilled without classifier-free guidance (SD-Turbo): guidance 0, one pass per step. Nothing
   * in an export says so but its name: without this option, a `_name_or_path` containing "turbo" decides.
   */
  noCfg?: boolean;
  defaultSteps?: number;
  defaultGuidance?: number;
  defaultSampler?: SamplerName;
  /** The add-on family LoRAs must declare (default: sd1, sd2 or sdxl, recognised from the text encoder). */
  family?: string;
  /**
   * How the bundle serves LoRAs (default `DEFAULT_LORA_MODE`): "branch" rewrites the U-Net and text encoders with
   * rank-flexible branch inputs (written into the bundle folder), so LoRA sets switch per request and hot sets are
   * merged in the background; "merge" keeps the export's graphs and builds a merged session per LoRA set; "none"
   * takes no LoRAs.
   */
  lora?: LoraImportMode;
}

export type LoraImportMode = "branch" | "merge" | "none";

/**
 * Merge: the export's own graphs, so a request without LoRA pays nothing, and a LoRA set pays one merge, then runs at
 * the base model's speed. Rank-0 branches at the sd15 fixture's 83 layers made its U-Net 41% (batch 1) to 62% (batch 2,
 * CFG) slower per call, same outputs (bench/graph-cost.ts; README.md, "Importing a Stable Diffusion export"): branch
 * mode is for models whose requests bring many different LoRA sets.
 */
export const DEFAULT_LORA_MODE: LoraImportMode = "merge";

export interface ImportResult {
  dir: string;
  manifest: ModelManifest;
  /** What the export was recognised as, in words. */
  recognised: string;
}

export class ImportError extends Error {
  override readonly name = "ImportError";
  readonly problems: readonly string[];
  constructor(exportDir: string, problems: readonly string[]) {
    super(`cannot import ${exportDir}:\n  - ${problems.join("\n  - ")}`);
    this.problems = problems;
  }
}

/** diffusers pipelines whose text-to-image inputs the runner feeds. */
const PIPELINES = {
  StableDiffusionPipeline: "sd",
  LatentConsistencyModelPipeline: "sd",
  StableDiffusionXLPipeline: "sdxl",
} as const;

/**
 * Scheduler classes an export may ship with: the ones the runner runs, and PNDM (SD 1.x's), which shares their
 * training schedule; its model runs with DPM-Solver++ 2M instead of PLMS.
 */
const SCHEDULERS: Readonly<Record<string, SamplerName>> = { ...SCHEDULER_CLASSES, PNDMScheduler: "dpm++2m" };

/** Samplers offered for a model trained with the usual noise schedule; each is kept if the export's config builds it. */
const STANDARD_SAMPLERS: readonly SamplerName[] = ["euler", "euler-a", "dpm++2m", "dpm++2m-karras", "ddim"];

const BUNDLE_EXPORT = "export";
const NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;

type Json = Record<string, unknown>;

function readJson(path: string, problems: string[], what: string): Json | undefined {
  if (!existsSync(path)) {
    problems.push(`${what} is missing (${path})`);
    return undefined;
  }
  try {
    return JSON.parse(readFileSync(path, "utf8")) as Json;
  } catch (err) {
    problems.push(`${what} is not valid JSON: ${(err as Error).message}`);
    return undefined;
  }
}

const num = (v: unknown): number | undefined => (typeof v === "number" ? v : undefined);
const lastDim = (t: TensorSpec | undefined): number | string | undefined => t?.shape[t.shape.length - 1];

interface Part {
  name: "text_encoder" | "text_encoder_2" | "unet" | "vae_decoder" | "vae_encoder";
  config?: Json;
  io?: GraphIo;
}

/**
 * Reads an export and writes its bundle. Throws `ImportError` naming every problem; nothing is written then.
 *
 * @example
 * const { dir, manifest } = await importExport("exports/sd15", { out: "models", name: "sd15" });
 */
export async function importExport(exportDir: string, options: ImportOptions): Promise<ImportResult> {
  const src = resolve(exportDir);
  const problems: string[] = [];
  const refuse: () => never = () => {
    throw new ImportError(exportDir, problems);
  };
  if (!existsSync(src)) {
    problems.push(`${src} does not exist`);
    refuse();
  }
  const name = options.name ?? basename(src).toLowerCase();
  if (!NAME.test(name))
    problems.push(`model name "${name}" must be lowercase letters, digits, ".", "_" or "-" (at most 64); pass --name`);

  const index = readJson(join(src, "model_index.json"), problems, "model_index.json");
  if (index === undefined) refuse();
  const pipelineClass = String(index!._class_name);
  const kind = PIPELINES[pipelineClass as keyof typeof PIPELINES];
  if (kind === undefined)
    problems.push(`pipeline ${pipelineClass} is not supported (supported: ${Object.keys(PIPELINES).join(", ")})`);
  const xl = kind === "sdxl";

  // Every part the pipeline needs, present and readable, before any graph is opened.
  const modelParts: Part["name"][] = [
    "text_encoder",
    ...(xl ? (["text_encoder_2"] as const) : []),
    "unet",
    "vae_decoder",
  ];
  if (existsSync(join(src, "vae_encoder", "model.onnx"))) modelParts.push("vae_encoder");
  const parts = new Map<Part["name"], Part>();
  for (const part of modelParts) {
    if (!existsSync(join(src, part, "model.onnx"))) {
      problems.push(`${part}/model.onnx is missing`);
      continue;
    }
    const config = readJson(join(src, part, "config.json"), problems, `${part}/config.json`);
    parts.set(part, { name: part, ...(config ? { config } : {}) });
  }
  const tokenizerFolders = ["tokenizer", ...(xl ? ["tokenizer_2"] : [])];
  for (const folder of tokenizerFolders) {
    for (const file of ["vocab.json", "merges.txt"])
      if (!existsSync(join(src, folder, file))) problems.push(`${folder}/${file} is missing`);
  }
  const scheduler = readJson(
    join(src, "scheduler", "scheduler_config.json"),
    problems,
    "scheduler/scheduler_config.json",
  ) as DiffusersSchedulerConfig | undefined;
  if (problems.length > 0) refuse();

  for (const part of parts.values()) {
    const { io, problems: found } = await readGraphIo(join(src, part.name, "model.onnx"), part.name);
    problems.push(...found);
    if (io) part.io = io;
  }
  const tokenizers: ClipTokenizerSpec[] = [];
  for (const folder of tokenizerFolders) {
    try {
      const t = ClipTokenizer.fromDir(join(src, folder));
      tokenizers.push({
        type: "clip",
        path: `${BUNDLE_EXPORT}/${folder}`,
        max_length: t.maxLength,
        pad_id: t.padId,
        bos_id: t.bosId,
        eos_id: t.eosId,
      });
    } catch (err) {
      problems.push(`${folder} does not load as a CLIP tokenizer: ${(err as Error).message}`);
    }
  }
  if (problems.length > 0) refuse();

  const unet = parts.get("unet")!;
  const vae = parts.get("vae_decoder")!;
  const unetConfig = unet.config ?? {};
  const vaeConfig = vae.config ?? {};
  const input = (part: Part, n: string) => part.io!.inputs.find((t) => t.name === n);
  const output = (part: Part, n: string) => part.io!.outputs.find((t) => t.name === n);

  // The scheduler: a class the runner knows, a prediction type it samples, options every offered sampler reads.
  const schedulerClass = String(scheduler!._class_name);
  const classSampler = SCHEDULERS[schedulerClass];
  if (classSampler === undefined)
    problems.push(
      `scheduler class ${schedulerClass} is not supported (supported: ${Object.keys(SCHEDULERS).join(", ")})`,
    );
  const prediction = (scheduler!.prediction_type ?? "epsilon") as string;
  if (prediction !== "epsilon" && prediction !== "v_prediction")
    problems.push(`scheduler prediction_type "${prediction}" is not supported (epsilon, v_prediction)`);

  // The U-Net's inputs are exactly what its config implies.
  const lcm = num(unetConfig.time_cond_proj_dim) !== undefined;
  const textTime = unetConfig.addition_embed_type === "text_time";
  if (xl !== textTime)
    problems.push(
      `unet/config.json addition_embed_type is ${JSON.stringify(unetConfig.addition_embed_type)}, but the pipeline is ${pipelineClass}`,
    );
  const expected = [
    "sample",
    "timestep",
    "encoder_hidden_states",
    ...(lcm ? ["timestep_cond"] : []),
    ...(textTime ? ["text_embeds", "time_ids"] : []),
  ];
  const actual = unet.io!.inputs.map((t) => t.name);
  for (const n of expected)
    if (!actual.includes(n)) problems.push(`unet graph has no input "${n}", which its config implies`);
  for (const n of actual)
    if (!expected.includes(n))
      problems.push(`unet graph input "${n}" is not one its config implies (${expected.join(", ")})`);
  if (unet.io!.outputs.length !== 1)
    problems.push(`unet graph has ${unet.io!.outputs.length} outputs; one (the prediction) expected`);

  // Latent channels: U-Net sample, U-Net prediction, VAE config and decoder input agree.
  const latentChannels = num(vaeConfig.latent_channels) ?? 4;
  const vaeIn = vae.io!.inputs[0];
  const channels = {
    "unet sample": input(unet, "sample")?.shape[1],
    "unet output": unet.io!.outputs[0]?.shape[1],
    "unet/config.json in_channels": num(unetConfig.in_channels),
    "vae_decoder/config.json latent_channels": latentChannels,
    [`vae_decoder input "${vaeIn?.name}"`]: vaeIn?.shape[1],
  };
  if (new Set(Object.values(channels)).size !== 1)
    problems.push(
      `latent channels disagree: ${Object.entries(channels)
        .map(([k, v]) => `${k} ${v}`)
        .join(", ")}`,
    );
  if (vae.io!.inputs.length !== 1)
    problems.push(`vae_decoder graph has ${vae.io!.inputs.length} inputs; one (the latents) expected`);
  if (vae.io!.outputs[0]?.shape[1] !== 3)
    problems.push(
      `vae_decoder output "${vae.io!.outputs[0]?.name}" has ${vae.io!.outputs[0]?.shape[1]} channels; 3 expected`,
    );
  const scalingFactor = num(vaeConfig.scaling_factor);
  if (scalingFactor === undefined) problems.push(`vae_decoder/config.json has no scaling_factor`);
  if (vaeConfig.shift_factor !== undefined && vaeConfig.shift_factor !== null)
    problems.push(`vae_decoder/config.json shift_factor is set: not a Stable Diffusion 1/2/XL VAE`);

  // Text conditioning: which output of each encoder the U-Net reads, and that the widths add up.
  const encoders = [parts.get("text_encoder")!, ...(xl ? [parts.get("text_encoder_2")!] : [])];
  const hiddenStates = encoders.map((e) => {
    const ids = e.io!.inputs[0];
    if (ids === undefined || (ids.dtype !== "int64" && ids.dtype !== "int32"))
      problems.push(`${e.name} graph's first input is not int64/int32 token ids`);
    const extra = e.io!.inputs.slice(1).filter((t) => t.name !== "attention_mask");
    if (extra.length > 0)
      problems.push(
        `${e.name} graph takes ${extra.map((t) => `"${t.name}"`).join(", ")}, which the runner does not feed`,
      );
    if (!xl) return "last_hidden_state";
    // SDXL reads hidden_states[-2]: of L layers' outputs hidden_states.0 (embeddings) … hidden_states.L, that is L−1.
    const layers = num(e.config?.num_hidden_layers);
    return layers === undefined ? "(num_hidden_layers missing from config.json)" : `hidden_states.${layers - 1}`;
  });
  encoders.forEach((e, i) => {
    if (!output(e, hiddenStates[i]!))
      problems.push(
        `${e.name} graph has no output "${hiddenStates[i]}" (outputs: ${e.io!.outputs.map((t) => t.name).join(", ")})`,
      );
  });
  const widths = encoders.map((e, i) => lastDim(output(e, hiddenStates[i]!)));
  const textWidth = widths.every((w) => typeof w === "number")
    ? (widths as number[]).reduce((a, b) => a + b, 0)
    : undefined;
  const unetText = lastDim(input(unet, "encoder_hidden_states"));
  if (textWidth !== undefined && (unetText !== textWidth || num(unetConfig.cross_attention_dim) !== textWidth)) {
    problems.push(
      `text width ${widths.join(" + ")} = ${textWidth} does not match the unet's encoder_hidden_states ${unetText} (config cross_attention_dim ${unetConfig.cross_attention_dim})`,
    );
  }
  if (lcm && lastDim(input(unet, "timestep_cond")) !== num(unetConfig.time_cond_proj_dim)) {
    problems.push(
      `unet timestep_cond width ${lastDim(input(unet, "timestep_cond"))} does not match config time_cond_proj_dim ${unetConfig.time_cond_proj_dim}`,
    );
  }
  if (xl) {
    const pooled = output(parts.get("text_encoder_2")!, "text_embeds");
    if (!pooled) problems.push(`text_encoder_2 graph has no output "text_embeds" (the pooled projection)`);
    else if (lastDim(pooled) !== lastDim(input(unet, "text_embeds")))
      problems.push(
        `text_encoder_2 text_embeds width ${lastDim(pooled)} does not match the unet's text_embeds ${lastDim(input(unet, "text_embeds"))}`,
      );
    if (lastDim(input(unet, "time_ids")) !== 6)
      problems.push(
        `unet time_ids has ${lastDim(input(unet, "time_ids"))} values; SDXL base takes 6 (a refiner's aesthetic score is not supported)`,
      );
  }
  if (problems.length > 0) refuse();

  // Samplers: the ones whose arithmetic fits, built from the export's own config as diffusers' from_config would.
  const builds = (sampler: SamplerName) => {
    try {
      const s = samplerFromSchedulerConfig(scheduler!, { sampler, predictionType: prediction as PredictionType });
      return s.predictionTypes.includes(prediction as PredictionType);
    } catch {
      return false;
    }
  };
  // LCM on a standard model is for LCM-LoRA (a LoRA that makes any fine-tune a few-step model): diffusers'
  // LCMScheduler.from_config(pipe.scheduler.config) keeps the betas, LCM's own defaults do the rest.
  const candidates: SamplerName[] = lcm ? ["lcm"] : [...STANDARD_SAMPLERS, "lcm" as const].filter(builds);
  if (lcm && !builds("lcm")) problems.push(`the LCM sampler cannot run from scheduler_config.json (${schedulerClass})`);
  const karras = classSampler === "dpm++2m" && scheduler!.use_karras_sigmas === true;
  const defaultSampler = options.defaultSampler ?? (lcm ? "lcm" : karras ? "dpm++2m-karras" : classSampler!);
  if (!candidates.includes(defaultSampler))
    problems.push(
      `sampler ${defaultSampler} cannot run this export's scheduler config (runnable: ${candidates.join(", ") || "none"})`,
    );
  if (problems.length > 0) refuse();

  const textConfig = encoders[0]!.config ?? {};
  const family =
    options.family ??
    (xl ? "sdxl" : textConfig.hidden_act === "gelu" || num(textConfig.hidden_size) === 1024 ? "sd2" : "sd1");
  // Nothing in an export marks a model distilled without CFG but its name: SD-Turbo's `_name_or_path` says turbo.
  const noCfg = options.noCfg ?? (!lcm && /turbo/i.test(String(index!._name_or_path ?? "")));
  const vaeScale = 2 ** (((vaeConfig.block_out_channels as unknown[] | undefined)?.length ?? 4) - 1);
  const unetLevels = ((unetConfig.block_out_channels as unknown[] | undefined)?.length ?? 4) - 1;
  const multipleOf = vaeScale * 2 ** unetLevels;
  const size = (num(unetConfig.sample_size) ?? 64) * vaeScale;
  const roundTo = (v: number) => Math.max(multipleOf, Math.round(v / multipleOf) * multipleOf);
  const guidanceDefault = options.defaultGuidance ?? (noCfg ? 0 : lcm ? 8.5 : xl ? 5 : 7.5);
  const loraMode = options.lora ?? DEFAULT_LORA_MODE;
  let lora: ImportedLora | undefined;
  if (loraMode !== "none") {
    const loraParts = (["text_encoder", "text_encoder_2", "unet"] as const).filter((p) => parts.has(p));
    try {
      lora = importLora(
        Object.fromEntries(loraParts.map((p) => [p, new Uint8Array(readFileSync(join(src, p, "model.onnx")))])),
        loraMode,
      );
    } catch (err) {
      problems.push(
        `LoRA ${loraMode} mode: ${(err as Error).message} (import with --lora none to serve the model without LoRAs)`,
      );
      refuse();
    }
  }
  // A rewritten graph lives in the bundle folder (the export is never written to), its branch inputs declared.
  const component = (part: Part): ComponentSpec => {
    const branches = lora?.rewritten.get(part.name);
    return branches
      ? { path: `${part.name}/model.onnx`, inputs: [...part.io!.inputs, ...branches.inputs], outputs: part.io!.outputs }
      : { path: `${BUNDLE_EXPORT}/${part.name}/model.onnx`, inputs: part.io!.inputs, outputs: part.io!.outputs };
  };
  const components: Record<string, ComponentSpec> = {};
  for (const part of parts.values()) components[part.name] = component(part);

  const recognised = [
    xl ? "SDXL" : family === "sd2" ? "SD 2.x" : "SD 1.x",
    lcm ? "LCM-distilled (timestep_cond)" : noCfg ? "few-step, no CFG" : "",
    prediction,
    unet.io!.inputs[0]!.dtype === "float16" ? "fp16" : "fp32",
  ]
    .filter(Boolean)
    .join(", ");
  const manifest = {
    schema_version: 1,
    kind: "diffusion",
    name,
    family,
    version: String(index!._diffusers_version ?? "1"),
    description: `${name}: imported from an ONNX export (${pipelineClass}; ${recognised})`,
    prediction_type: prediction,
    samplers: candidates,
    default_sampler: defaultSampler,
    default_steps: options.defaultSteps ?? (lcm ? 4 : noCfg ? 1 : 30),
    image: {
      width: size,
      height: size,
      channels: 3,
      min_size: roundTo(size / 2),
      max_size: roundTo(size * 2),
      multiple_of: multipleOf,
    },
    latent: { channels: latentChannels, downsample: vaeScale, scaling_factor: scalingFactor },
    scheduler: {
      num_train_timesteps: num(scheduler!.num_train_timesteps) ?? 1000,
      beta_schedule: scheduler!.beta_schedule ?? "linear",
      beta_start: num(scheduler!.beta_start) ?? 0.0001,
      beta_end: num(scheduler!.beta_end) ?? 0.02,
      ...(lcm
        ? {
            original_inference_steps: num(scheduler!.original_inference_steps) ?? 50,
            timestep_scaling: num(scheduler!.timestep_scaling) ?? 10,
          }
        : {}),
    },
    scheduler_config: Object.fromEntries(Object.entries(scheduler!).filter(([k]) => k !== "_diffusers_version")),
    guidance: {
      cfg: !noCfg && !lcm,
      default_scale: guidanceDefault,
      // diffusers' get_guidance_scale_embedding: w = (scale − 1) · 1000, sin then cos, frequencies over (dim/2 − 1).
      ...(lcm
        ? {
            embedding: {
              input: "timestep_cond",
              dim: num(unetConfig.time_cond_proj_dim)!,
              w_scale: 1000,
              freq_shift: 1,
            },
          }
        : {}),
    },
    tokenizer: tokenizers[0]!,
    ...(xl ? { tokenizer_2: tokenizers[1]! } : {}),
    text_conditioning: {
      hidden_states: hiddenStates,
      ...(xl
        ? {
            pooled: { component: "text_encoder_2", output: "text_embeds", unet_input: "text_embeds" },
            time_ids: { unet_input: "time_ids" },
            zero_empty_negative: index!.force_zeros_for_empty_prompt !== false,
          }
        : {}),
    },
    components,
    ...(lora ? { lora: lora.spec } : {}),
  };
  const parsed = ModelManifest.safeParse(manifest);
  if (!parsed.success) {
    problems.push(...parsed.error.issues.map((i) => `manifest.${i.path.join(".")}: ${i.message}`));
    refuse();
  }

  const out = resolve(options.out);
  const dest = join(out, name);
  if (existsSync(dest) && !options.force) {
    problems.push(`${dest} already exists (pass --force to replace it)`);
    refuse();
  }
  mkdirSync(out, { recursive: true });
  const tmp = join(out, `.${name}.importing-${process.pid}`);
  rmSync(tmp, { recursive: true, force: true });
  try {
    mkdirSync(tmp);
    if (options.copy) cpSync(src, join(tmp, BUNDLE_EXPORT), { recursive: true });
    else symlinkSync(src, join(tmp, BUNDLE_EXPORT), "dir");
    for (const [part, { model }] of lora?.rewritten ?? []) writeRewritten(tmp, src, part, model);
    writeFileSync(join(tmp, "manifest.json"), JSON.stringify(parsed.data, null, 2) + "\n");
    if (existsSync(dest)) {
      const old = `${tmp}.old`;
      renameSync(dest, old);
      renameSync(tmp, dest);
      rmSync(old, { recursive: true, force: true });
    } else {
      renameSync(tmp, dest);
    }
  } catch (err) {
    rmSync(tmp, { recursive: true, force: true });
    throw err;
  }
  return { dir: dest, manifest: parsed.data, recognised };
}

/**
 * A rewritten graph beside its external data: the graph names `model.onnx_data` by the export's relative location,
 * and ONNX Runtime refuses a path (or a symbolic link) that leads out of the model's folder, so each file is
 * hard-linked into the folder (no bytes copied), or copied when the export lies on another file system.
 */
function writeRewritten(bundleDir: string, exportDir: string, part: string, model: Uint8Array): void {
  mkdirSync(join(bundleDir, part));
  writeFileSync(join(bundleDir, part, "model.onnx"), model);
  for (const location of externalDataFiles(model)) {
    const [from, to] = [join(exportDir, part, location), join(bundleDir, part, location)];
    try {
      linkSync(from, to);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EXDEV") throw err;
      copyFileSync(from, to);
    }
  }
}
