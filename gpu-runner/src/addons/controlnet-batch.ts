/**
 * The ControlNets of a batch: loaded once per bundle, each one's control images and scales laid out per sample of
 * the U-Net batch, and their residuals computed per step, here in sequence or in a ControlNet worker of this
 * inference worker's own (in parallel with the U-Net's head).
 */
import * as ort from "onnxruntime-node";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import { ControlNetManifest, type ModelManifest } from "@imagegen/formats/manifest";
import { describeIssues, fromWire, RunnerError } from "../errors.ts";
import { BundleError, type SessionConfig } from "../pipeline/bundle.ts";
import type { StepContext, StepFeeds } from "../pipeline/pipeline.ts";
import {
  CONTROL,
  CONTROL_SLOTS,
  type FromControlNet,
  type SharedResidual,
  type ToControlNet,
  waitAsync,
} from "../workers/controlnet-protocol.ts";
import { ControlImageError } from "./control-image.ts";
import { loadControlNet, type ControlNet, type ControlNetRef, type ControlNetUse } from "./controlnet.ts";
import type { RequestAddons } from "./request-addons.ts";

/** ControlNet sessions loaded in this thread, once per bundle folder (a failed load is retried next time). */
export class ControlNetSessions {
  private readonly nets = new Map<string, Promise<ControlNet>>();
  private readonly session: SessionConfig;

  constructor(session: SessionConfig) {
    this.session = session;
  }

  get(base: ModelManifest, dir: string): Promise<ControlNet> {
    let net = this.nets.get(dir);
    if (!net) {
      net = loadControlNet(dir, base, this.session);
      net.catch(() => this.nets.delete(dir));
      this.nets.set(dir, net);
    }
    return net;
  }
}

/** A ControlNet known by its manifest only (its session runs in the ControlNet worker). */
export function manifestOnly(dir: string): ControlNetRef {
  const path = join(dir, "manifest.json");
  if (!existsSync(path)) throw new RunnerError("bundle_invalid", `ControlNet bundle ${dir} has no manifest.json`);
  const parsed = ControlNetManifest.safeParse(JSON.parse(readFileSync(path, "utf8")));
  if (!parsed.success) throw new BundleError(dir, describeIssues(parsed.error.issues));
  return { dir, manifest: parsed.data };
}

/**
 * Each ControlNet's use across a U-Net batch of `unetBatch` samples (sample s is image s mod n: with classifier-free
 * guidance both halves get the add-ons). One run per (bundle, k-th use of it in a request): a request may use one
 * ControlNet twice, with two control images.
 */
export function batchControlNets<N extends ControlNetRef>(
  nets: ReadonlyMap<string, N>,
  perImage: ReadonlyArray<RequestAddons["controlnets"]>,
  unetBatch: number,
): ControlNetUse<N>[] {
  const images = perImage.length;
  const slots = new Map<string, { dir: string; k: number }>();
  for (const uses of perImage) {
    const seen = new Map<string, number>();
    for (const u of uses) {
      const k = seen.get(u.dir) ?? 0;
      seen.set(u.dir, k + 1);
      slots.set(`${u.dir}#${k}`, { dir: u.dir, k });
    }
  }
  return [...slots.values()].map(({ dir, k }) => {
    const net = nets.get(dir)!;
    const { channels, height, width } = net.manifest.conditioning;
    const per = channels * height * width;
    const conditioning = new Float32Array(unetBatch * per);
    const scales = new Float32Array(unetBatch);
    for (let s = 0; s < unetBatch; s++) {
      const use = perImage[s % images]!.filter((c) => c.dir === dir)[k];
      if (!use) continue;
      if (use.conditioning.length !== per)
        throw new ControlImageError(
          `control image for ${net.manifest.name} has ${use.conditioning.length} values, expected ${per}`,
        );
      conditioning.set(use.conditioning, s * per);
      scales[s] = use.scale;
    }
    return { net, conditioning, scales };
  });
}

/** One batch's shared buffers and announcements, on the inference worker's side. */
interface SharedBatch {
  id: number;
  control: Int32Array;
  sample: Float32Array;
  timestep: Float32Array;
  /** The residual buffers, announced after the first step. */
  residuals: Promise<Record<string, SharedResidual>>;
  /** Rejects with the worker's error when a step fails. */
  failure: Promise<never>;
}

/**
 * A ControlNet worker of this inference worker's own: steps' residuals are computed there, in parallel. A batch is
 * set up by one message; its steps cross threads through shared memory and Atomics only (controlnet-worker.ts).
 */
export class ControlNetWorker {
  private readonly worker: Worker;
  private nextId = 1;
  private readonly announced = new Map<
    number,
    {
      residuals: (r: Record<string, SharedResidual>) => void;
      fail: (e: Error) => void;
    }
  >();
  /** The current batch's setups, by its ControlNet uses (the same array every step of a batch). */
  private readonly batches = new Map<ControlNetUse<ControlNetRef>[], SharedBatch>();

  constructor(session: SessionConfig) {
    this.worker = new Worker(new URL("../workers/controlnet-worker.ts", import.meta.url), { workerData: { session } });
    this.worker.unref();
    this.worker.on("message", (msg: FromControlNet) => {
      const w = this.announced.get(msg.id);
      if (msg.type === "residuals") w?.residuals(msg.residuals);
      else w?.fail(fromWire(msg.error));
    });
    this.worker.on("error", (err) => {
      for (const w of this.announced.values()) w.fail(err);
    });
  }

  private setUp(base: ModelManifest, uses: ControlNetUse<ControlNetRef>[], step: StepContext): SharedBatch {
    const id = this.nextId++;
    let residuals!: (r: Record<string, SharedResidual>) => void;
    let fail!: (e: Error) => void;
    const announced = new Promise<Record<string, SharedResidual>>((resolve, reject) => {
      residuals = resolve;
      fail = reject;
    });
    const failure = new Promise<never>((_, reject) => announced.catch(reject));
    announced.catch(() => {});
    failure.catch(() => {});
    this.announced.set(id, { residuals, fail });
    const sampleBuffer = new SharedArrayBuffer((step.sample.data as Float32Array).byteLength);
    const timestepBuffer = new SharedArrayBuffer(step.timestepTensor.data.length * 4);
    const controlBuffer = new SharedArrayBuffer(CONTROL_SLOTS * 4);
    const ehs = step.encoderHiddenStates;
    this.worker.postMessage({
      type: "batch",
      id,
      base,
      uses: uses.map((u) => ({ dir: u.net.dir, conditioning: u.conditioning, scales: u.scales })),
      control: controlBuffer,
      sample: sampleBuffer,
      sampleDims: [...step.sample.dims],
      timestep: timestepBuffer,
      timestepDims: [...step.timestepTensor.dims],
      encoderHiddenStates: { data: ehs.data as Float32Array, dims: [...ehs.dims] },
    } satisfies ToControlNet);
    const batch: SharedBatch = {
      id,
      control: new Int32Array(controlBuffer),
      sample: new Float32Array(sampleBuffer),
      timestep: new Float32Array(timestepBuffer),
      residuals: announced,
      failure,
    };
    this.batches.set(uses, batch);
    return batch;
  }

  /**
   * One step's residuals as U-Net feeds, promised: the worker computes them while the U-Net's head (which reads
   * none) runs here. The tensors lie in shared memory the worker overwrites on the next step, which cannot start
   * before this step's U-Net has read them (it needs this step's output).
   */
  residuals(base: ModelManifest, uses: ControlNetUse<ControlNetRef>[], step: StepContext): StepFeeds {
    const batch = this.batches.get(uses) ?? this.setUp(base, uses, step);
    const { control } = batch;
    batch.sample.set(step.sample.data as Float32Array);
    const t = step.timestepTensor.data as ArrayLike<number | bigint>;
    for (let i = 0; i < t.length; i++) batch.timestep[i] = Number(t[i]);
    const seq = Atomics.add(control, CONTROL.requested, 1) + 1;
    Atomics.notify(control, CONTROL.requested);
    const ready = (async () => {
      for (;;) {
        const done = Atomics.load(control, CONTROL.done);
        if (done >= seq) break;
        const wait = waitAsync(control, CONTROL.done, done);
        if (wait.async) await wait.value;
      }
      if (Atomics.load(control, CONTROL.failed) === 1) await batch.failure;
      return batch.residuals;
    })();
    const feeds: StepFeeds = {};
    for (const name of new Set(uses.flatMap((u) => Object.values(u.net.manifest.residuals)))) {
      const residual = ready.then((r) => {
        const shared = r[name];
        if (!shared) throw new Error(`no ControlNet produced residual "${name}"`);
        return new ort.Tensor("float32", new Float32Array(shared.buffer), shared.dims);
      });
      // A part that does not read this residual on this step (a DeepCache step) must not turn a failure into
      // an unhandled rejection; the parts that do read it still see the error.
      residual.catch(() => {});
      feeds[name] = residual;
    }
    return feeds;
  }

  /** Called when a batch ends: the worker stops serving its steps and drops its buffers. */
  endBatch(): void {
    for (const batch of this.batches.values()) {
      this.worker.postMessage({ type: "end", id: batch.id } satisfies ToControlNet);
      this.announced.delete(batch.id);
    }
    this.batches.clear();
  }
}
