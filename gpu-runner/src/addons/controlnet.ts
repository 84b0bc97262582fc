/**
 * ControlNet beside the U-Net (DESIGN.md): a ControlNet is its own bundle and session, producing one residual per
 * skip connection plus the middle block; the U-Net takes them as inputs. Several ControlNets add their scaled
 * residuals; in a shared batch, samples that do not use a ControlNet get none of its residuals.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import * as ort from "onnxruntime-node";
import { describeIssues } from "../errors.ts";
import {
  BundleError,
  Component,
  compareTensors,
  sessionOptions,
  type ComponentName,
  type SessionConfig,
} from "../pipeline/bundle.ts";
import { ControlNetManifest, controlNetMismatches, type ModelManifest } from "@imagegen/formats/manifest";

/** A ControlNet known by its bundle folder and manifest. */
export interface ControlNetRef {
  dir: string;
  manifest: ControlNetManifest;
}

/** A ControlNet with its session loaded in this thread. */
export interface ControlNet extends ControlNetRef {
  component: Component;
}

/** Loads and checks a ControlNet bundle against its session and against the base model it will feed. */
export async function loadControlNet(dir: string, base: ModelManifest, config: SessionConfig): Promise<ControlNet> {
  const path = join(dir, "manifest.json");
  if (!existsSync(path)) throw new BundleError(dir, ["manifest.json not found"]);
  const parsed = ControlNetManifest.safeParse(JSON.parse(readFileSync(path, "utf8")));
  if (!parsed.success) throw new BundleError(dir, describeIssues(parsed.error.issues));
  const manifest = parsed.data;
  const problems = controlNetMismatches(manifest, {
    name: base.name,
    family: base.family,
    residuals: base.controlnet?.residuals ?? [],
  });
  const spec = manifest.components.controlnet;
  const onnx = join(dir, spec.path);
  if (!existsSync(onnx))
    throw new BundleError(dir, [...problems, `components.controlnet: file ${spec.path} not found`]);
  const session = await ort.InferenceSession.create(onnx, sessionOptions(config));
  problems.push(
    ...compareTensors("controlnet input", spec.inputs, session.inputMetadata),
    ...compareTensors("controlnet output", spec.outputs, session.outputMetadata),
  );
  if (problems.length) {
    await session.release();
    throw new BundleError(dir, problems);
  }
  return { dir, manifest, component: new Component("controlnet" as ComponentName, spec, session) };
}

/** One ControlNet's use across a batch: per-sample conditioning (zeros where unused) and per-sample scale. */
export interface ControlNetUse<N extends ControlNetRef = ControlNet> {
  net: N;
  /** [unetBatch, C, H, W]. */
  conditioning: Float32Array;
  /** Per sample of the U-Net batch; 0 where the sample's request does not use this ControlNet. */
  scales: Float32Array;
}

/** The condition input is the one input that is not the U-Net's sample, timestep or text. */
function conditionInput(net: ControlNet): string {
  const name = net.component.spec.inputs.find(
    (t) => !["sample", "timestep", "encoder_hidden_states"].includes(t.name),
  )?.name;
  if (!name) throw new BundleError(net.dir, ["the ControlNet has no conditioning input"]);
  return name;
}

/**
 * Runs every ControlNet of the batch for one step and sums their scaled residuals by U-Net input name.
 * Returns a promise per residual so the U-Net's head (which reads none) can start before they are ready.
 */
export function controlNetResiduals(
  uses: ControlNetUse[],
  step: { sample: ort.Tensor; timestepTensor: ort.Tensor; encoderHiddenStates: ort.Tensor },
): Record<string, Promise<ort.Tensor>> {
  // Residuals no ControlNet produces keep the pipeline's zeros.
  const residualNames = [...new Set(uses.flatMap((u) => Object.values(u.net.manifest.residuals)))];
  const all = (async () => {
    const sums = new Map<string, { data: Float32Array; dims: readonly number[] }>();
    for (const use of uses) {
      const spec = use.net.manifest.conditioning;
      const batch = use.scales.length;
      const out = await use.net.component.run({
        sample: step.sample,
        timestep: step.timestepTensor,
        encoder_hidden_states: step.encoderHiddenStates,
        [conditionInput(use.net)]: new ort.Tensor("float32", use.conditioning, [
          batch,
          spec.channels,
          spec.height,
          spec.width,
        ]),
      });
      for (const [output, residual] of Object.entries(use.net.manifest.residuals)) {
        const t = out[output]!;
        const data = t.data as Float32Array;
        const per = data.length / batch;
        const acc = sums.get(residual) ?? { data: new Float32Array(data.length), dims: t.dims };
        for (let b = 0; b < batch; b++) {
          const s = use.scales[b]!;
          if (s === 0) continue;
          for (let j = b * per; j < (b + 1) * per; j++) acc.data[j]! += s * data[j]!;
        }
        sums.set(residual, acc);
      }
    }
    return sums;
  })();
  return Object.fromEntries(
    residualNames.map((name) => [
      name,
      all.then((sums) => {
        const r = sums.get(name);
        if (!r) throw new Error(`no ControlNet produced residual "${name}"`);
        return new ort.Tensor("float32", r.data, r.dims);
      }),
    ]),
  );
}
