/**
 * Folded LoRA sets: a branch model's batch whose requests all bring one LoRA set runs its U-Net on the merged
 * weights `W + Σ s·(alpha/rank)·up·down`, fed as inputs of one shared session per component whose target weights
 * are graph inputs (onnx/weight-inputs.ts). Nothing is computed per step beyond the base model, whatever the number
 * and rank of the stacked LoRAs, and no session is built per set (hot-merge.ts builds one, ~200 ms, for hot sets).
 *
 * Per set, the merged weights are computed once per component, on its first run, by a small fold graph (one MatMul
 * per target, in ONNX Runtime: ~1-4 ms for three LoCon files on tiny-shapes) and kept for the next batches of the
 * set (bounded, least recent dropped). Batches whose requests bring different sets keep the per-sample branches.
 * The shared sessions are built once per bundle, in the background when a worker loads it (`prepare`), else on the
 * first batch that folds, which waits for them.
 */
import * as ort from "onnxruntime-node";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { LoraTarget } from "@imagegen/formats/manifest";
import { downFeatures } from "@imagegen/formats/lora-keys";
import { buildModel, type Initializer, type NodeSpec, type ValueInfo } from "../onnx/builder.ts";
import { weightsAsInputs } from "../onnx/weight-inputs.ts";
import {
  Component,
  sessionOptions,
  type Bundle,
  type ComponentName,
  type Feeds,
  type SessionConfig,
} from "../pipeline/bundle.ts";
import type { LoraCache } from "./lora-cache.ts";
import { LoraError, type LoraUse } from "./lora.ts";
import { loraSetKey, type RequestAddons } from "./request-addons.ts";

/**
 * Folded sets' weights kept per worker, in bytes (each set holds a copy of the target weights of every component that
 * ran it: 4 MB per component on tiny-shapes); least recent dropped first, the current set always kept.
 */
const FOLDED_BYTES_KEPT = 256 * 1024 * 1024;

const isTextEncoder = (component: string) => component === "text_encoder" || component === "text_encoder_2";

interface FoldedPart {
  name: ComponentName;
  /** The component's graph with its targets' weights as float32 inputs. */
  session: ort.InferenceSession;
  /** W + up·down per target: inputs u<i> [out, R], d<i> [R, in·k]; outputs w<i> in the weight's dims. */
  fold: ort.InferenceSession;
  targets: LoraTarget[];
  /** Per target (same order), the graph input that carries its weight. */
  inputs: string[];
}

interface FoldModel {
  parts: FoldedPart[];
  release(): Promise<void>;
}

/** The fold graph of one component: per target, its base weight plus the stacked LoRAs' product. */
function foldGraph(targets: LoraTarget[], weights: { dims: number[]; base: Float32Array }[]): Uint8Array {
  const inputs: ValueInfo[] = [];
  const outputs: ValueInfo[] = [];
  const nodes: NodeSpec[] = [];
  const initializers: Initializer[] = [];
  targets.forEach((t, i) => {
    const nIn = downFeatures(t);
    const { dims, base } = weights[i]!;
    inputs.push(
      { name: `u${i}`, dtype: "float32", shape: [t.out_features, `r${i}`] },
      { name: `d${i}`, dtype: "float32", shape: [`r${i}`, nIn] },
    );
    initializers.push(
      { name: `b${i}`, dims, data: base },
      { name: `s${i}`, dims: [dims.length], data: BigInt64Array.from(dims.map(BigInt)) },
    );
    nodes.push({ op: "MatMul", inputs: [`u${i}`, `d${i}`], outputs: [`m${i}`] }); // [out, in·k]
    let delta = `m${i}`;
    if (t.weight_layout === "in_out") {
      nodes.push({ op: "Transpose", inputs: [delta], outputs: [`t${i}`], attributes: { perm: [1, 0] } });
      delta = `t${i}`;
    }
    nodes.push(
      { op: "Reshape", inputs: [delta, `s${i}`], outputs: [`r${i}`] },
      { op: "Add", inputs: [`b${i}`, `r${i}`], outputs: [`w${i}`] },
    );
    outputs.push({ name: `w${i}`, dtype: "float32", shape: dims });
  });
  return buildModel({ inputs, outputs, nodes, initializers });
}

/** One set's stacked LoRAs at one target, as the fold graph takes them: up [out, R] scaled, down [R, in·k]. */
function stackedAt(t: LoraTarget, uses: LoraUse[], maxRank: number): { up: ort.Tensor; down: ort.Tensor } {
  const nIn = downFeatures(t);
  const nOut = t.out_features;
  const total = uses.reduce((sum, u) => sum + (u.lora.layers.get(t.module)?.rank ?? 0), 0);
  if (total > maxRank)
    throw new LoraError(`stacked LoRAs reach rank ${total} at '${t.module}', above the model's maximum of ${maxRank}`);
  // A target no file has keys for gets one zero rank: onnxruntime's MatMul with an inner dimension of 0 returns
  // uninitialised memory (lora-branches.ts).
  const R = Math.max(1, total);
  const down = new Float32Array(R * nIn);
  const up = new Float32Array(nOut * R);
  let r0 = 0;
  for (const use of uses) {
    const layer = use.lora.layers.get(t.module);
    if (!layer) continue;
    const s = use.scale * layer.scale;
    down.set(layer.down, r0 * nIn);
    for (let o = 0; o < nOut; o++)
      for (let r = 0; r < layer.rank; r++) up[o * R + r0 + r] = layer.up[o * layer.rank + r]! * s;
    r0 += layer.rank;
  }
  return { up: new ort.Tensor("float32", up, [nOut, R]), down: new ort.Tensor("float32", down, [R, nIn]) };
}

export class LoraFold {
  private readonly session: SessionConfig;
  private readonly loras: LoraCache;
  /** Per bundle folder: its shared sessions, null where the model cannot fold (the reason is in `unsupported`). */
  private readonly models = new Map<string, { promise: Promise<FoldModel | null> }>();
  /** Per (bundle, set): per component, its merged weights as feeds, and their bytes once computed. */
  private readonly sets = new Map<string, { parts: Map<ComponentName, Promise<Feeds>>; bytes: number }>();
  /** Why a bundle does not fold, by folder (for tests and logs). */
  readonly unsupported = new Map<string, string>();
  /** Merged weight sets computed (per component): for tests and the bench. */
  folds = 0;

  constructor(session: SessionConfig, loras: LoraCache) {
    this.session = session;
    this.loras = loras;
  }

  /** Whether a bundle's LoRAs may fold at all: branch mode, named weights, none in a text encoder. */
  static eligible(bundle: Bundle): boolean {
    const spec = bundle.manifest.lora;
    return (
      spec?.mode === "branch" &&
      bundle.lorasMerged === undefined &&
      spec.targets.length > 0 &&
      spec.targets.every((t) => t.components.every((c) => !isTextEncoder(c) && t.weight?.[c]))
    );
  }

  /** Starts building a bundle's shared sessions in the background (once per bundle). */
  prepare(bundle: Bundle): void {
    if (!LoraFold.eligible(bundle) || this.models.has(bundle.dir)) return;
    const promise = this.build(bundle).catch((err: Error) => {
      this.unsupported.set(bundle.dir, err.message);
      return null;
    });
    this.models.set(bundle.dir, { promise });
  }

  /** Resolves when every bundle's sessions started so far are built (or refused): for tests and the bench. */
  async settled(): Promise<void> {
    await Promise.all([...this.models.values()].map((e) => e.promise));
  }

  /**
   * The bundle a batch runs on when its requests share one non-empty LoRA set and the bundle's shared sessions are
   * built (waited for: the same request always runs the same way): a copy whose LoRA-holding components feed the
   * set's merged weights. Undefined otherwise (branches).
   */
  async bundleFor(bundle: Bundle, addons: RequestAddons[]): Promise<Bundle | undefined> {
    if (!LoraFold.eligible(bundle) || addons.length === 0) return undefined;
    const key = loraSetKey(addons[0]!.loras);
    if (key === "" || addons.some((a) => loraSetKey(a.loras) !== key)) return undefined;
    this.prepare(bundle);
    const model = await this.models.get(bundle.dir)!.promise;
    if (!model) return undefined;
    const setKey = `${bundle.dir}|${key}`;
    const entry = this.sets.get(setKey) ?? { parts: new Map<ComponentName, Promise<Feeds>>(), bytes: 0 };
    this.sets.delete(setKey);
    this.sets.set(setKey, entry);
    this.evict();
    const weights = entry.parts;
    // Parsed now (cache hits when warm), so a file that does not fit the model fails the batch before any step.
    const uses = this.loras.uses(bundle, addons[0]!.loras);
    const maxRank = bundle.manifest.lora!.max_rank;
    const components = { ...bundle.components };
    for (const part of model.parts) {
      const base = bundle.components[part.name];
      if (!base) continue;
      const feedsOf = (): Promise<Feeds> => {
        let p = weights.get(part.name);
        if (!p) {
          p = this.foldPart(part, uses, maxRank);
          p.then(
            (feeds) => {
              entry.bytes += Object.values(feeds).reduce((n, t) => n + (t.data as Float32Array).byteLength, 0);
              this.evict();
            },
            () => weights.delete(part.name),
          );
          weights.set(part.name, p);
        }
        return p;
      };
      components[part.name] = new Component(part.name, base.spec, part.session, feedsOf);
    }
    return {
      ...bundle,
      components,
      lorasMerged: key,
      lorasFolded: true,
      release: async () => {}, // the sessions are shared; they live as long as the worker
    };
  }

  /** Drops the least recent sets while the kept weights exceed the budget (the most recent set stays). */
  private evict(): void {
    let total = 0;
    for (const e of this.sets.values()) total += e.bytes;
    while (total > FOLDED_BYTES_KEPT && this.sets.size > 1) {
      const [oldest, e] = this.sets.entries().next().value!;
      this.sets.delete(oldest);
      total -= e.bytes;
    }
  }

  private async foldPart(part: FoldedPart, uses: LoraUse[], maxRank: number): Promise<Feeds> {
    const feeds: Feeds = {};
    part.targets.forEach((t, i) => {
      const { up, down } = stackedAt(t, uses, maxRank);
      feeds[`u${i}`] = up;
      feeds[`d${i}`] = down;
    });
    const out = await part.fold.run(feeds);
    this.folds++;
    return Object.fromEntries(part.inputs.map((input, i) => [input, out[`w${i}`]!]));
  }

  private async build(bundle: Bundle): Promise<FoldModel> {
    const spec = bundle.manifest.lora!;
    const options = sessionOptions(this.session);
    const parts: FoldedPart[] = [];
    const release = async () => {
      await Promise.all(parts.flatMap((p) => [p.session.release(), p.fold.release()]));
    };
    try {
      for (const [name, component] of Object.entries(bundle.components) as [ComponentName, Component][]) {
        const targets = spec.targets.filter((t) => t.weight?.[name]);
        if (targets.length === 0) continue;
        const model = new Uint8Array(readFileSync(join(bundle.dir, component.spec.path)));
        const rewrite = weightsAsInputs(
          model,
          targets.map((t) => t.weight![name]!),
        );
        const weights = targets.map((t) => rewrite.weights.get(t.weight![name]!)!);
        targets.forEach((t, i) => {
          const n = weights[i]!.base.length;
          if (n !== t.out_features * downFeatures(t))
            throw new LoraError(`weight of '${t.module}' in ${name} has ${n} values, not out × in of its target`);
        });
        const session = await ort.InferenceSession.create(rewrite.model, options);
        const fold = await ort.InferenceSession.create(foldGraph(targets, weights), options);
        parts.push({ name, session, fold, targets, inputs: weights.map((w) => w.input) });
      }
    } catch (err) {
      await release();
      throw err;
    }
    return { parts, release };
  }
}
