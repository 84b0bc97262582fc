/**
 * The U-Net split for a ControlNet in parallel: two sessions cut where the residuals first enter
 * (onnx/partition.ts). The early part (time embedding, down and mid blocks) reads none of them and runs on the
 * inference worker while the ControlNet worker computes them; the late part (residual additions, up blocks) waits
 * for them. The DeepCache head only covers the first down block; this cut overlaps about half the U-Net.
 * Built once per model in the background when the worker loads it; merged or folded LoRA weights live in other
 * sessions, so those batches keep the DeepCache parts (which are merged and folded too).
 */
import * as ort from "onnxruntime-node";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { TensorSpec } from "@imagegen/formats/manifest";
import { ELEM_TYPES, partitionByInputs } from "../onnx/partition.ts";
import { Component, sessionOptions, type Bundle, type SessionConfig } from "../pipeline/bundle.ts";
import type { OverlapParts } from "../pipeline/pipeline.ts";

export class ControlNetOverlap {
  private readonly session: SessionConfig;
  private readonly built = new Map<string, Promise<OverlapParts | null>>();
  /** Why a model has no overlap split, by folder (for tests and logs). */
  readonly unsupported = new Map<string, string>();

  constructor(session: SessionConfig) {
    this.session = session;
  }

  /** Whether this bundle's U-Net session is the model's own (not a merged or folded copy), with residual inputs. */
  static eligible(bundle: Bundle): boolean {
    return (bundle.manifest.controlnet?.residuals.length ?? 0) > 0 && bundle.lorasMerged === undefined;
  }

  /** Starts building the split in the background (once per model). */
  prepare(bundle: Bundle): void {
    if (!ControlNetOverlap.eligible(bundle) || this.built.has(bundle.dir)) return;
    this.built.set(
      bundle.dir,
      this.build(bundle).catch((err: Error) => {
        this.unsupported.set(bundle.dir, err.message);
        return null;
      }),
    );
  }

  /** The split for this bundle's batches (waited for when still building), or undefined where it has none. */
  async parts(bundle: Bundle): Promise<OverlapParts | undefined> {
    if (!ControlNetOverlap.eligible(bundle)) return undefined;
    this.prepare(bundle);
    return (await this.built.get(bundle.dir)!) ?? undefined;
  }

  private async build(bundle: Bundle): Promise<OverlapParts> {
    const unet = bundle.components.unet;
    const residuals = bundle.manifest.controlnet!.residuals;
    const model = new Uint8Array(readFileSync(join(bundle.dir, unet.spec.path)));
    const p = partitionByInputs(model, residuals);
    const early = p.earlyInputs.filter((n) => residuals.includes(n));
    if (early.length) throw new Error(`the U-Net's early part reads residuals ${early.join(", ")}`);
    // Residuals no node reads stay out of the late part too: the pipeline feeds only what a part declares.
    const options = { ...sessionOptions(this.session), logSeverityLevel: 3 as const };
    const earlySession = await ort.InferenceSession.create(p.early, options);
    const types = new Map<string, { elemType: number }>();
    for (const meta of earlySession.outputMetadata) {
      const elemType = meta.isTensor ? ELEM_TYPES[meta.type] : undefined;
      if (elemType === undefined) throw new Error(`handed-over tensor '${meta.name}' has an unsupported type`);
      types.set(meta.name, { elemType });
    }
    const lateSession = await ort.InferenceSession.create(p.late(types), options);
    const declared = new Map(unet.spec.inputs.map((t) => [t.name, t]));
    // Handed-over tensors pass between the parts as ONNX Runtime gives them ("float32" here only means: no cast).
    const handed = p.handover.map((name): TensorSpec => ({ name, dtype: "float32", shape: [] }));
    const spec = (inputs: string[], extra: TensorSpec[], outputs: TensorSpec[]) => ({
      ...unet.spec,
      inputs: [...inputs.map((n) => declared.get(n)!), ...extra],
      outputs,
    });
    return {
      early: new Component("unet", spec(p.earlyInputs, [], handed), earlySession),
      late: new Component("unet", spec(p.lateInputs, handed, unet.spec.outputs), lateSession),
    };
  }
}
