/** Small tensor helpers the pipeline's steps share, and the error they raise. */
import * as ort from "onnxruntime-node";
import type { TensorSpec } from "@imagegen/formats/manifest";
import { RunnerError } from "../errors.ts";

/** A request this model cannot generate (size, batch, inputs it cannot feed): another attempt would fail alike. */
export class GenerationError extends RunnerError {
  override readonly name = "GenerationError";
  constructor(message: string, options?: ErrorOptions) {
    super("generation_failed", message, options);
  }
}

export function floatTensor(data: Float32Array, dims: readonly number[]): ort.Tensor {
  return new ort.Tensor("float32", data, dims);
}

/** A tensor of `values` in the dtype the graph declares (ids and timesteps come as plain numbers). */
export function tensorOf(dtype: TensorSpec["dtype"], values: readonly number[], dims: readonly number[]): ort.Tensor {
  if (dtype === "int64") return new ort.Tensor("int64", BigInt64Array.from(values, (v) => BigInt(Math.round(v))), dims);
  if (dtype === "int32") return new ort.Tensor("int32", Int32Array.from(values, Math.round), dims);
  if (dtype === "float32") return new ort.Tensor("float32", Float32Array.from(values), dims);
  throw new GenerationError(`${dtype} inputs are not supported by the pipeline`);
}

/** `data` repeated `times` times, back to back. */
export function tile(data: Float32Array, times: number): Float32Array {
  const out = new Float32Array(data.length * times);
  for (let i = 0; i < times; i++) out.set(data, i * data.length);
  return out;
}
