/**
 * A ControlNet worker (ControlNet-as-a-Service, in the manner of SwiftDiffusion/Katz): spawned by an inference
 * worker, it holds the ControlNet sessions and computes a step's residuals on its own thread while the U-Net's
 * head runs on the inference worker's. A batch is set up once by message (control images, text conditioning, the
 * shared buffers); each step then crosses threads through shared memory only: the inference worker writes the
 * sample and timestep into SharedArrayBuffers and bumps a counter (Atomics.notify), this worker runs the
 * ControlNets and writes the summed residuals into SharedArrayBuffers the U-Net reads in place, then bumps another.
 */
import * as ort from "onnxruntime-node";
import { parentPort, workerData } from "node:worker_threads";
import { controlNetResiduals, loadControlNet, type ControlNet } from "../addons/controlnet.ts";
import { toWire } from "../errors.ts";
import { SessionConfigSchema } from "../pipeline/bundle.ts";
import type { ModelManifest } from "@imagegen/formats/manifest";
import {
  CONTROL,
  waitAsync,
  type FromControlNet,
  type SharedResidual,
  type ToControlNet,
} from "./controlnet-protocol.ts";

const port = parentPort;
if (port === null) throw new Error("controlnet-worker must run in a worker thread");
const session = SessionConfigSchema.parse((workerData as { session: unknown }).session);
const nets = new Map<string, Promise<ControlNet>>();
const batches = new Map<number, Int32Array>();

function net(dir: string, base: ModelManifest): Promise<ControlNet> {
  let n = nets.get(dir);
  if (!n) {
    n = loadControlNet(dir, base, session);
    n.catch(() => nets.delete(dir));
    nets.set(dir, n);
  }
  return n;
}

async function serve(msg: Extract<ToControlNet, { type: "batch" }>): Promise<void> {
  const control = new Int32Array(msg.control);
  batches.set(msg.id, control);
  const sample = new ort.Tensor("float32", new Float32Array(msg.sample), msg.sampleDims);
  const timestep = new ort.Tensor("float32", new Float32Array(msg.timestep), msg.timestepDims);
  const encoderHiddenStates = new ort.Tensor("float32", msg.encoderHiddenStates.data, msg.encoderHiddenStates.dims);
  let shared: Record<string, Float32Array> | undefined;
  let served = 0;
  try {
    const uses = await Promise.all(
      msg.uses.map(async (u) => ({ net: await net(u.dir, msg.base), conditioning: u.conditioning, scales: u.scales })),
    );
    for (;;) {
      const wait = waitAsync(control, CONTROL.requested, served);
      if (wait.async) await wait.value;
      if (Atomics.load(control, CONTROL.closed) === 1) return;
      served = Atomics.load(control, CONTROL.requested);
      const pending = controlNetResiduals(uses, { sample, timestepTensor: timestep, encoderHiddenStates });
      const values: Record<string, ort.Tensor> = {};
      for (const [name, p] of Object.entries(pending)) values[name] = await p;
      if (!shared) {
        // First step: the residual buffers are made to the outputs' sizes and announced once.
        shared = {};
        const announced: Record<string, SharedResidual> = {};
        for (const [name, t] of Object.entries(values)) {
          const buffer = new SharedArrayBuffer((t.data as Float32Array).byteLength);
          shared[name] = new Float32Array(buffer);
          announced[name] = { buffer, dims: [...t.dims] };
        }
        port!.postMessage({ type: "residuals", id: msg.id, residuals: announced } satisfies FromControlNet);
      }
      for (const [name, t] of Object.entries(values)) shared[name]!.set(t.data as Float32Array);
      Atomics.store(control, CONTROL.done, served);
      Atomics.notify(control, CONTROL.done);
    }
  } catch (err) {
    port!.postMessage({ type: "error", id: msg.id, error: toWire(err) } satisfies FromControlNet);
    Atomics.store(control, CONTROL.failed, 1);
    Atomics.store(control, CONTROL.done, Atomics.load(control, CONTROL.requested));
    Atomics.notify(control, CONTROL.done);
  } finally {
    batches.delete(msg.id);
  }
}

port.on("message", (msg: ToControlNet) => {
  if (msg.type === "batch") return void serve(msg);
  const control = batches.get(msg.id);
  if (control) {
    Atomics.store(control, CONTROL.closed, 1);
    Atomics.add(control, CONTROL.requested, 1); // wakes the loop, which sees `closed`
    Atomics.notify(control, CONTROL.requested);
  }
});
