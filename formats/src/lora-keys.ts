/**
 * Maps a LoRA file's keys onto a model's LoRA targets (REFERENCE.md, "LoRA keys"). The model's own module paths
 * are converted the way each convention spells them, and keys are looked up in that table; underscores are never
 * parsed back into dots. kohya: `lora_unet_<path with . → _>.lora_down.weight | .lora_up.weight | .alpha`;
 * PEFT / diffusers: `unet.<path>.lora_A.weight | .lora_B.weight` (alpha from metadata, else alpha = rank).
 * Pure TypeScript: the edge validates uploads with it and the runner loads with it.
 */
import type { TensorInfo } from "./safetensors.ts";

/** The layer kinds a LoRA target can be (the manifest's `lora.targets[].kind`). */
export const LORA_TARGET_KINDS = ["linear", "conv1x1", "conv3x3"] as const;

export interface LoraTargetShape {
  module: string;
  in_features: number;
  out_features: number;
  /** Absent means linear (models registered before the kind was recorded). */
  kind?: (typeof LORA_TARGET_KINDS)[number];
}

export interface LoraLayerKeys {
  module: string;
  convention: "kohya" | "peft";
  downKey: string;
  upKey: string;
  alphaKey?: string;
  rank: number;
  inFeatures: number;
  outFeatures: number;
}

export interface LoraMapping {
  layers: LoraLayerKeys[];
  /** One message per key that cannot be used, naming the key: the file is refused when any exist. */
  errors: string[];
  /** Keys that match no layer of the model (errors too, unless `allowPartial`). */
  unmapped: string[];
  /** Keys used (down, up and alpha of every layer) of the file's `total`: every load reports mapped / total. */
  mapped: number;
  total: number;
}

export const kohyaPrefix = (module: string) => `lora_unet_${module.replace(/\./g, "_")}`;

/**
 * The kohya key prefixes of a target: U-Net modules `lora_unet_…`; text-encoder modules (qualified as
 * `text_encoder.<path>`, see MODULE_SCOPE in lora-targets.ts) `lora_te_…` or `lora_te1_…`, SDXL's second
 * `lora_te2_…`.
 */
export function kohyaPrefixes(module: string): string[] {
  const flat = (path: string) => path.replace(/\./g, "_");
  if (module.startsWith("text_encoder_2.")) return [`lora_te2_${flat(module.slice("text_encoder_2.".length))}`];
  if (module.startsWith("text_encoder.")) {
    const rest = flat(module.slice("text_encoder.".length));
    return [`lora_te_${rest}`, `lora_te1_${rest}`];
  }
  return [kohyaPrefix(module)];
}

const KOHYA = [".lora_down.weight", ".lora_up.weight", ".alpha"] as const;
/** PEFT (`lora_A` / `lora_B`) and diffusers' older attention-processor spelling (`lora.down` / `lora.up`). */
const PEFT = [".lora_A.weight", ".lora_B.weight", ".lora.down.weight", ".lora.up.weight"] as const;
const PEFT_PREFIXES = ["unet.", "base_model.model.", ""];
/** kohya files written against the original LDM (CompVis) U-Net names rather than diffusers'. */
const LDM_UNET = /^lora_unet_(input_blocks|middle_block|output_blocks|time_embed|label_emb)_/;

export interface MapLoraOptions {
  /** Load what maps and skip keys that match no layer of the model (they are still reported); off: refuse the file. */
  allowPartial?: boolean;
}

/** Kernel positions per input feature: 9 for a 3×3 convolution target, 1 otherwise. */
export const kernelSize = (t: Pick<LoraTargetShape, "kind">) => (t.kind === "conv3x3" ? 9 : 1);

/**
 * The width of a target's down matrix as the runner stacks and merges it: in_features × kernelSize. A conv3x3
 * target's down kernel [r, in, 3, 3] (kohya LoCon `lora_down`, PEFT Conv2d `lora_A`) is read row-major as [r, in·9],
 * index c·9 + ky·3 + kx (fed to the graph as [batch, r, in, 9]); its up is the 1×1 kernel [out, r, 1, 1].
 */
export const downFeatures = (t: Pick<LoraTargetShape, "kind" | "in_features">) => t.in_features * kernelSize(t);

/** [rows, cols] of a weight: [r, in] or [out, r] (or with trailing 1×1 dims), or [r, in, 3, 3] when `kernel` is 3. */
function matrixDims(shape: number[], kernel = 1): [number, number] | undefined {
  if (shape.length === 2 && kernel === 1) return [shape[0]!, shape[1]!];
  if (shape.length === 4 && shape[2] === kernel && shape[3] === kernel) return [shape[0]!, shape[1]!];
  return undefined;
}

export function mapLoraKeys(
  tensors: Iterable<TensorInfo>,
  targets: LoraTargetShape[],
  maxRank: number,
  options: MapLoraOptions = {},
): LoraMapping {
  const byKohya = new Map(targets.flatMap((t) => kohyaPrefixes(t.module).map((p) => [p, t] as const)));
  const byPath = new Map(targets.map((t) => [t.module, t]));
  const takesText = targets.some((t) => t.module.startsWith("text_encoder."));
  const twoEncoders = targets.some((t) => t.module.startsWith("text_encoder_2."));
  const groups = new Map<
    string,
    { target: LoraTargetShape; convention: "kohya" | "peft"; down?: TensorInfo; up?: TensorInfo; alpha?: TensorInfo }
  >();
  const errors: string[] = [];
  const unmapped: string[] = [];
  const otherArchitecture: string[] = [];
  let total = 0;

  for (const t of tensors) {
    total++;
    const kohyaSuffix = KOHYA.find((s) => t.name.endsWith(s));
    const peftSuffix = PEFT.find((s) => t.name.endsWith(s));
    let target: LoraTargetShape | undefined;
    let convention: "kohya" | "peft" | undefined;
    let role: "down" | "up" | "alpha" | undefined;
    if (kohyaSuffix) {
      const prefix = t.name.slice(0, -kohyaSuffix.length);
      target = byKohya.get(prefix);
      convention = "kohya";
      role = kohyaSuffix === ".lora_down.weight" ? "down" : kohyaSuffix === ".lora_up.weight" ? "up" : "alpha";
      if (!target && /^lora_te[12]_/.test(prefix) && !twoEncoders) {
        otherArchitecture.push(t.name);
        continue;
      }
      if (!target && LDM_UNET.test(prefix)) {
        errors.push(
          `key '${t.name}' uses the original LDM layer names (input_blocks/middle_block/output_blocks), which are not converted here: convert the file to diffusers names`,
        );
        continue;
      }
      if (!target && prefix.startsWith("lora_te") && !takesText) {
        unmapped.push(t.name);
        if (!options.allowPartial)
          errors.push(`key '${t.name}' adapts the text encoder, which this model does not take LoRAs for`);
        continue;
      }
    } else if (peftSuffix) {
      const path = t.name.slice(0, -peftSuffix.length);
      const bare = PEFT_PREFIXES.map((p) => (path.startsWith(p) ? path.slice(p.length) : undefined)).find(
        (p) => p !== undefined && byPath.has(p),
      );
      target = bare !== undefined ? byPath.get(bare) : undefined;
      convention = "peft";
      role = peftSuffix === ".lora_A.weight" || peftSuffix === ".lora.down.weight" ? "down" : "up";
    } else {
      errors.push(`key '${t.name}' is neither a kohya (lora_down/lora_up/alpha) nor a PEFT (lora_A/lora_B) LoRA key`);
      continue;
    }
    if (!target) {
      unmapped.push(t.name);
      if (!options.allowPartial) errors.push(`key '${t.name}' matches no LoRA target of this model`);
      continue;
    }
    const group = groups.get(target.module) ?? { target, convention: convention! };
    if (group.convention !== convention) {
      errors.push(`key '${t.name}' mixes LoRA conventions for module '${target.module}'`);
      continue;
    }
    if (group[role!]) {
      errors.push(`key '${t.name}' repeats the ${role} weight of module '${target.module}'`);
      continue;
    }
    group[role!] = t;
    groups.set(target.module, group);
  }
  if (otherArchitecture.length) {
    // One message, first: the likeliest cause of every other refusal in such a file (an SDXL LoRA on SD 1.x/2.x).
    errors.unshift(
      `${otherArchitecture.length} keys (e.g. '${otherArchitecture[0]}') are for a model with two text encoders (SDXL's lora_te1_/lora_te2_); ` +
        `this model has ${takesText ? "one" : "no text-encoder LoRA layers"}: the LoRA was trained for another architecture`,
    );
  }
  const layers: LoraLayerKeys[] = [];
  for (const [module, g] of groups) {
    if (!g.down || !g.up) {
      errors.push(
        `module '${module}' has ${g.down ? "a down" : "an up"} weight ('${(g.down ?? g.up)!.name}') but no ${g.down ? "up" : "down"} weight`,
      );
      continue;
    }
    const conv = g.target.kind === "conv3x3";
    const down = matrixDims(g.down.shape, conv ? 3 : 1);
    const up = matrixDims(g.up.shape);
    if (!down) {
      errors.push(
        `key '${g.down.name}' has shape [${g.down.shape}]; expected [rank, ${g.target.in_features}${conv ? ", 3, 3" : ""}]` +
          (conv ? ` (module '${module}' is a 3×3 convolution)` : ""),
      );
      continue;
    }
    if (!up) {
      errors.push(`key '${g.up.name}' has shape [${g.up.shape}]; expected [${g.target.out_features}, rank]`);
      continue;
    }
    const [rank, inFeatures] = down;
    if (inFeatures !== g.target.in_features)
      errors.push(
        `key '${g.down.name}' has ${inFeatures} input features; module '${module}' has ${g.target.in_features}`,
      );
    if (up[0] !== g.target.out_features)
      errors.push(`key '${g.up.name}' has ${up[0]} output features; module '${module}' has ${g.target.out_features}`);
    if (up[1] !== rank) errors.push(`key '${g.up.name}' has rank ${up[1]} but '${g.down.name}' has rank ${rank}`);
    if (rank > maxRank) errors.push(`key '${g.down.name}' has rank ${rank}, above this model's maximum of ${maxRank}`);
    if (g.alpha && g.alpha.shape.reduce((a, b) => a * b, 1) !== 1)
      errors.push(`key '${g.alpha.name}' must be a scalar`);
    layers.push({
      module,
      convention: g.convention,
      downKey: g.down.name,
      upKey: g.up.name,
      ...(g.alpha ? { alphaKey: g.alpha.name } : {}),
      rank,
      inFeatures,
      outFeatures: up[0]!,
    });
  }
  if (layers.length === 0 && errors.length === 0)
    errors.push(
      unmapped.length
        ? `none of the file's ${total} keys matches a LoRA layer of this model`
        : "the file holds no LoRA weights",
    );
  const mapped = layers.reduce((n, l) => n + (l.alphaKey ? 3 : 2), 0);
  return { layers, errors, unmapped, mapped, total };
}
