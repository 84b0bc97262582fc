/**
 * The physical floor of a U-Net step: its multiply-add work (Conv, ConvTranspose, MatMul, Gemm, counted from the
 * ONNX graph with the activation shapes ONNX Runtime's profiler reports) against what this CPU sustains on a
 * large matrix product. Elementwise operators, norms and softmax are not counted: they are memory-bound and
 * small next to the products, so the floor is a lower bound.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import * as ort from "onnxruntime-node";
import type { ComponentSpec } from "@imagegen/formats/manifest";
import { buildModel } from "../src/onnx/builder.ts";
import { readOnnxGraph } from "@imagegen/formats/onnx-reader";

interface ProfileEvent {
  cat: string;
  name: string;
  args?: {
    op_name?: string;
    node_index?: string;
    input_type_shape?: Record<string, number[]>[];
    output_type_shape?: Record<string, number[]>[];
  };
}

const shapeOf = (entry: Record<string, number[]> | undefined): number[] =>
  entry ? (Object.values(entry)[0] ?? []) : [];
const numel = (dims: number[]) => dims.reduce((a, b) => a * b, 1);

/** Zero feeds for a component at batch 1 (dynamic rank axes at 0, as with no LoRA). */
function zeroFeeds(spec: ComponentSpec): Record<string, ort.Tensor> {
  const feeds: Record<string, ort.Tensor> = {};
  for (const input of spec.inputs) {
    const dims = input.shape.map((d) => (typeof d === "number" ? d : d.toLowerCase().includes("rank") ? 0 : 1));
    const size = numel(dims);
    if (input.dtype === "int64") feeds[input.name] = new ort.Tensor("int64", new BigInt64Array(size).fill(500n), dims);
    else if (input.dtype === "int32") feeds[input.name] = new ort.Tensor("int32", new Int32Array(size).fill(500), dims);
    else
      feeds[input.name] = new ort.Tensor(
        "float32",
        new Float32Array(size).fill(input.name === "timestep" ? 500 : 0),
        dims,
      );
  }
  return feeds;
}

export interface FlopCount {
  /** Multiply-adds ×2 per sample for one run of the component. */
  flops: number;
  byOp: Record<string, number>;
}

/**
 * Counts one run's FLOPs by profiling an unoptimised session (so node indices match the file), at batch 1 with
 * symbolic axes at 1 unless `feeds` gives the real shapes (an imported export's height, width and tokens are symbolic).
 */
export async function countFlops(
  modelPath: string,
  spec: ComponentSpec,
  feeds?: Record<string, ort.Tensor>,
): Promise<FlopCount> {
  const graph = readOnnxGraph(readFileSync(modelPath));
  const dir = mkdtempSync(join(tmpdir(), "flops-"));
  const session = await ort.InferenceSession.create(modelPath, {
    graphOptimizationLevel: "disabled",
    enableProfiling: true,
    profileFilePrefix: join(dir, "profile"),
    intraOpNumThreads: 1,
  });
  await session.run(feeds ?? zeroFeeds(spec));
  session.endProfiling();
  await session.release();
  const file = readdirSync(dir).find((f) => f.endsWith(".json"));
  if (file === undefined) throw new Error(`no profile written for ${modelPath}`);
  const events = JSON.parse(readFileSync(join(dir, file), "utf8")) as ProfileEvent[];
  rmSync(dir, { recursive: true, force: true });

  const byOp: Record<string, number> = {};
  for (const e of events) {
    const op = e.args?.op_name;
    if (e.cat !== "Node" || op === undefined || e.args?.node_index === undefined) continue;
    const node = graph.nodes[Number(e.args.node_index)];
    const input = shapeOf(e.args.input_type_shape?.[0]);
    const output = shapeOf(e.args.output_type_shape?.[0]);
    let flops = 0;
    if (op === "Conv" || op === "ConvTranspose") {
      const weight = (node && graph.initializers.get(node.inputs[1] ?? "")) ?? shapeOf(e.args.input_type_shape?.[1]);
      // Weights are [Cout, Cin/group, k…] for Conv and [Cin, Cout/group, k…] for ConvTranspose: dim 1 already
      // accounts for groups.
      const kernel = numel(weight.slice(2));
      flops = 2 * numel(op === "Conv" ? output : input) * (weight[1] ?? 0) * kernel;
    } else if (op === "MatMul") {
      flops = 2 * numel(output) * (input[input.length - 1] ?? 0);
    } else if (op === "Gemm") {
      const transA = node?.ints.transA === 1;
      flops = 2 * numel(output) * ((transA ? input[0] : input[1]) ?? 0);
    }
    if (flops > 0) byOp[op] = (byOp[op] ?? 0) + flops;
  }
  return { flops: Object.values(byOp).reduce((a, b) => a + b, 0), byOp };
}

/**
 * Kernels ONNX Runtime launches per run of the optimised graph (what a step really executes): with small
 * tensors a step costs about kernels × per-launch overhead, whatever its FLOPs.
 */
export async function kernelsPerRun(modelPath: string, spec: ComponentSpec): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), "kernels-"));
  const session = await ort.InferenceSession.create(modelPath, {
    graphOptimizationLevel: "all",
    enableProfiling: true,
    profileFilePrefix: join(dir, "profile"),
    intraOpNumThreads: 1,
  });
  const feeds = zeroFeeds(spec);
  const runs = 3;
  for (let i = 0; i < runs; i++) await session.run(feeds);
  session.endProfiling();
  await session.release();
  const file = readdirSync(dir).find((f) => f.endsWith(".json"));
  if (file === undefined) throw new Error(`no profile written for ${modelPath}`);
  const events = JSON.parse(readFileSync(join(dir, file), "utf8")) as ProfileEvent[];
  rmSync(dir, { recursive: true, force: true });
  return events.filter((e) => e.cat === "Node").length / runs;
}

/** Sustained FLOP/s of one large MatMul ([size,size]·[size,size], both graph inputs so nothing folds). */
export async function sustainedMatmulFlops(size: number, intraOpNumThreads: number, repeats = 5): Promise<number> {
  const model = buildModel({
    inputs: [
      { name: "a", dtype: "float32", shape: [size, size] },
      { name: "b", dtype: "float32", shape: [size, size] },
    ],
    outputs: [{ name: "c", dtype: "float32", shape: [size, size] }],
    nodes: [{ op: "MatMul", inputs: ["a", "b"], outputs: ["c"] }],
  });
  const session = await ort.InferenceSession.create(model, { intraOpNumThreads, interOpNumThreads: 1 });
  const data = new Float32Array(size * size).map((_, i) => ((i * 7919) % 1000) / 1000 - 0.5);
  const feeds = { a: new ort.Tensor("float32", data, [size, size]), b: new ort.Tensor("float32", data, [size, size]) };
  await session.run(feeds);
  let best = Infinity;
  for (let i = 0; i < repeats; i++) {
    const start = performance.now();
    await session.run(feeds);
    best = Math.min(best, performance.now() - start);
  }
  await session.release();
  return (2 * size ** 3) / (best / 1000);
}

/**
 * What onnxruntime-node charges per graph input per `run` (binding JS tensors to ORT values), from a one-node
 * graph run with 1 and with 41 inputs. The U-Net's add-on inputs (LoRA branches, residuals) pay it on every step.
 */
export async function runOverheadPerInput(runs = 2000): Promise<{ baseUs: number; perInputUs: number }> {
  const time = async (inputs: number) => {
    const names = Array.from({ length: inputs }, (_, i) => `x${i}`);
    const model = buildModel({
      inputs: names.map((name, i) => ({ name, dtype: "float32" as const, shape: [1, i === 0 ? 16 : 0] })),
      outputs: [{ name: "y", dtype: "float32", shape: [1, 16] }],
      nodes: [{ op: "Relu", inputs: ["x0"], outputs: ["y"] }],
    });
    const session = await ort.InferenceSession.create(model, { intraOpNumThreads: 1 });
    const feeds = Object.fromEntries(
      names.map((name, i) => [
        name,
        new ort.Tensor("float32", new Float32Array(i === 0 ? 16 : 0), [1, i === 0 ? 16 : 0]),
      ]),
    );
    for (let i = 0; i < 100; i++) await session.run(feeds);
    const start = performance.now();
    for (let i = 0; i < runs; i++) await session.run(feeds);
    const us = ((performance.now() - start) / runs) * 1000;
    await session.release();
    return us;
  };
  const one = await time(1);
  const many = await time(41);
  return { baseUs: one, perInputUs: (many - one) / 40 };
}
