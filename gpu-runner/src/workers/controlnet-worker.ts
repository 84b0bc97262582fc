/**
 * A ControlNet worker (ControlNet-as-a-Service, in the manner of SwiftDiffusion/Katz): spawned by an inference
 * worker, it holds the ControlNet sessions and computes a step's residuals on its own thread while the U-Net's
 * head runs on the inference worker's. Control images are sent once per batch; each step sends only the sample.
 */
import * as ort from "onnxruntime-node";
import { parentPort, workerData } from "node:worker_threads";
import { controlNetResiduals, loadControlNet, type ControlNet } from "../addons/controlnet.ts";
import { toWire, type WireError } from "../errors.ts";
import { SessionConfigSchema } from "../pipeline/bundle.ts";
import type { ModelManifest } from "@imagegen/formats/manifest";

export interface PlainTensor {
  data: Float32Array;
  dims: number[];
}

export type ToControlNet =
  | { type: "conditioning"; key: string; data: Float32Array }
  | { type: "forget"; keys: string[] }
  | {
      type: "run";
      id: number;
      base: ModelManifest;
      uses: Array<{ dir: string; key: string; scales: Float32Array }>;
      sample: PlainTensor;
      timestep: PlainTensor;
      encoderHiddenStates: PlainTensor;
    };

export type FromControlNet =
  | { type: "residuals"; id: number; residuals: Record<string, PlainTensor> }
  | { type: "error"; id: number; error: WireError };

const port = parentPort;
if (port === null) throw new Error("controlnet-worker must run in a worker thread");
const session = SessionConfigSchema.parse((workerData as { session: unknown }).session);
const nets = new Map<string, Promise<ControlNet>>();
const conditionings = new Map<string, Float32Array>();

const tensor = (t: PlainTensor) => new ort.Tensor("float32", t.data, t.dims);

port.on("message", async (msg: ToControlNet) => {
  if (msg.type === "conditioning") return void conditionings.set(msg.key, msg.data);
  if (msg.type === "forget") return void msg.keys.forEach((k) => conditionings.delete(k));
  try {
    const uses = await Promise.all(
      msg.uses.map(async (u) => {
        let net = nets.get(u.dir);
        if (!net) {
          net = loadControlNet(u.dir, msg.base, session);
          net.catch(() => nets.delete(u.dir));
          nets.set(u.dir, net);
        }
        const conditioning = conditionings.get(u.key);
        if (!conditioning) throw new Error(`no control image registered as ${u.key}`);
        return { net: await net, conditioning, scales: u.scales };
      }),
    );
    const pending = controlNetResiduals(uses, {
      sample: tensor(msg.sample),
      timestepTensor: tensor(msg.timestep),
      encoderHiddenStates: tensor(msg.encoderHiddenStates),
    });
    const residuals: Record<string, PlainTensor> = {};
    for (const [name, p] of Object.entries(pending)) {
      const t = await p;
      residuals[name] = { data: t.data as Float32Array, dims: [...t.dims] };
    }
    port.postMessage(
      { type: "residuals", id: msg.id, residuals } satisfies FromControlNet,
      Object.values(residuals).map((r) => r.data.buffer as ArrayBuffer),
    );
  } catch (err) {
    port.postMessage({ type: "error", id: msg.id, error: toWire(err) } satisfies FromControlNet);
  }
});
