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
}

export const kohyaPrefix = (module: string) => `lora_unet_${module.replace(/\./g, "_")}`;

const KOHYA = [".lora_down.weight", ".lora_up.weight", ".alpha"] as const;
const PEFT = [".lora_A.weight", ".lora_B.weight"] as const;
const PEFT_PREFIXES = ["unet.", "base_model.model.", ""];

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

export function mapLoraKeys(tensors: Iterable<TensorInfo>, targets: LoraTargetShape[], maxRank: number): LoraMapping {
  const byKohya = new Map(targets.map((t) => [kohyaPrefix(t.module), t]));
  const byPath = new Map(targets.map((t) => [t.module, t]));
  const groups = new Map<string, { target: LoraTargetShape; convention: "kohya" | "peft"; down?: TensorInfo; up?: TensorInfo; alpha?: TensorInfo }>();
  const errors: string[] = [];

  for (const t of tensors) {
    const kohyaSuffix = KOHYA.find((s) => t.name.endsWith(s));
    const peftSuffix = PEFT.find((s) => t.name.endsWith(s));
    let target: LoraTargetShape | undefined;
    let convention: "kohya" | "peft" | undefined;
    let role: "down" | "up" | "alpha" | undefined;
    let prefix = "";
    if (kohyaSuffix) {
      prefix = t.name.slice(0, -kohyaSuffix.length);
      target = byKohya.get(prefix);
      convention = "kohya";
      role = kohyaSuffix === ".lora_down.weight" ? "down" : kohyaSuffix === ".lora_up.weight" ? "up" : "alpha";
      if (!target && prefix.startsWith("lora_te")) {
        errors.push(`key '${t.name}' adapts the text encoder, which this model does not take LoRAs for`);
        continue;
      }
    } else if (peftSuffix) {
      const path = t.name.slice(0, -peftSuffix.length);
      const bare = PEFT_PREFIXES.map((p) => (path.startsWith(p) ? path.slice(p.length) : undefined)).find((p) => p !== undefined && byPath.has(p));
      prefix = path;
      target = bare !== undefined ? byPath.get(bare) : undefined;
      convention = "peft";
      role = peftSuffix === ".lora_A.weight" ? "down" : "up";
    } else {
      errors.push(`key '${t.name}' is neither a kohya (lora_down/lora_up/alpha) nor a PEFT (lora_A/lora_B) LoRA key`);
      continue;
    }
    if (!target) {
      errors.push(`key '${t.name}' matches no LoRA target of this model`);
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

  const layers: LoraLayerKeys[] = [];
  for (const [module, g] of groups) {
    if (!g.down || !g.up) {
      errors.push(`module '${module}' has ${g.down ? "a down" : "an up"} weight ('${(g.down ?? g.up)!.name}') but no ${g.down ? "up" : "down"} weight`);
      continue;
    }
    const conv = g.target.kind === "conv3x3";
    const down = matrixDims(g.down.shape, conv ? 3 : 1);
    const up = matrixDims(g.up.shape);
    if (!down) {
      errors.push(`key '${g.down.name}' has shape [${g.down.shape}]; expected [rank, ${g.target.in_features}${conv ? ", 3, 3" : ""}]` + (conv ? ` (module '${module}' is a 3×3 convolution)` : ""));
      continue;
    }
    if (!up) {
      errors.push(`key '${g.up.name}' has shape [${g.up.shape}]; expected [${g.target.out_features}, rank]`);
      continue;
    }
    const [rank, inFeatures] = down;
    if (inFeatures !== g.target.in_features) errors.push(`key '${g.down.name}' has ${inFeatures} input features; module '${module}' has ${g.target.in_features}`);
    if (up[0] !== g.target.out_features) errors.push(`key '${g.up.name}' has ${up[0]} output features; module '${module}' has ${g.target.out_features}`);
    if (up[1] !== rank) errors.push(`key '${g.up.name}' has rank ${up[1]} but '${g.down.name}' has rank ${rank}`);
    if (rank > maxRank) errors.push(`key '${g.down.name}' has rank ${rank}, above this model's maximum of ${maxRank}`);
    if (g.alpha && g.alpha.shape.reduce((a, b) => a * b, 1) !== 1) errors.push(`key '${g.alpha.name}' must be a scalar`);
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
  if (layers.length === 0 && errors.length === 0) errors.push("the file holds no LoRA weights");
  return { layers, errors };
}
