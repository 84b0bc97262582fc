/**
 * The LoRA half of importing an export (gpu-runner/src/import/ calls it): the manifest's `lora` spec for the
 * components' LoRA-able layers, and, in branch mode, the rewritten graphs to write into the bundle folder (never into
 * the user's export) with the branch inputs their manifest components declare. Merge mode changes no graph: the
 * targets name their weight initializers and hot-merge.ts builds a session per LoRA set.
 */
import type { LoraSpec, TensorSpec } from "@imagegen/formats/manifest";
import { graphLoraTargets } from "@imagegen/formats/lora-targets";
import { addLoraBranches, manifestTarget } from "../onnx/lora-branches.ts";

/** Largest total rank stacked into one branch: kohya LoRAs reach 128, and a few of them are stacked. */
export const IMPORTED_MAX_RANK = 512;

export interface ImportedLora {
  spec: LoraSpec;
  /** Branch mode: per component, the rewritten model.onnx bytes and the inputs to add to the component's spec. */
  rewritten: Map<string, { model: Uint8Array; inputs: TensorSpec[] }>;
}

/**
 * `models` maps component names (unet, text_encoder, text_encoder_2) to their model.onnx bytes (external data stays in
 * model.onnx_data, which the rewritten graph references by the same relative location: link or copy it beside).
 * Undefined when no component has a LoRA-able layer.
 */
export function importLora(
  models: Record<string, Uint8Array>,
  mode: LoraSpec["mode"],
  maxRank = IMPORTED_MAX_RANK,
): ImportedLora | undefined {
  const rewritten = new Map<string, { model: Uint8Array; inputs: TensorSpec[] }>();
  const targets: LoraSpec["targets"] = [];
  for (const [component, model] of Object.entries(models)) {
    const found = graphLoraTargets(model, component);
    if (mode === "merge") {
      targets.push(...found.map((t) => manifestTarget(t)));
      continue;
    }
    // A 1×1 conv with stride or padding takes no branch (none in SD's U-Nets): its keys then match no layer.
    const branchable = found.filter((t) => t.branchable);
    if (branchable.length === 0) continue;
    const r = addLoraBranches(model, component, branchable, targets.length);
    targets.push(...r.targets);
    rewritten.set(component, { model: r.model, inputs: r.inputs });
  }
  if (targets.length === 0) return undefined;
  return { spec: { mode, max_rank: maxRank, targets }, rewritten };
}
