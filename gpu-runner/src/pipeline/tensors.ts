/** Small tensor helpers the pipeline's steps share, and the error they raise. */
import * as ort from "onnxruntime-node";
import type { TensorSpec } from "@imagegen/formats/manifest";
import { f16ToF32, f32ToF16 } from "@imagegen/formats/safetensors";
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
  if (dtype === "int64")
    return new ort.Tensor(
      "int64",
      BigInt64Array.from(values, (v) => BigInt(Math.round(v))),
      dims,
    );
  if (dtype === "int32") return new ort.Tensor("int32", Int32Array.from(values, Math.round), dims);
  if (dtype === "float32") return new ort.Tensor("float32", Float32Array.from(values), dims);
  return new ort.Tensor("float16", toFloat16(Float32Array.from(values)), dims);
}

/** IEEE half-precision bits of each value, rounded to nearest even as PyTorch's `.half()` rounds. */
export function toFloat16(data: Float32Array): Uint16Array {
  const out = new Uint16Array(data.length);
  for (let i = 0; i < data.length; i++) out[i] = f32ToF16(data[i]!);
  return out;
}

/**
 * fp16 graphs (exports made with `--fp16`) take and give float16: the pipeline computes in float32 and converts at
 * the session's boundary, as diffusers' ONNX pipelines cast to the graph's dtype.
 */
export function toDtype(tensor: ort.Tensor, dtype: TensorSpec["dtype"]): ort.Tensor {
  if (tensor.type === "float32" && dtype === "float16")
    return new ort.Tensor("float16", toFloat16(tensor.data as Float32Array), tensor.dims);
  return tensor;
}

/** A float16 output as float32 (other tensors as they are). */
export function toFloat32(tensor: ort.Tensor): ort.Tensor {
  if (tensor.type !== "float16") return tensor;
  const bits = tensor.data as Uint16Array;
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = f16ToF32(bits[i]!);
  return floatTensor(out, tensor.dims);
}

/** `data` repeated `times` times, back to back. */
export function tile(data: Float32Array, times: number): Float32Array {
  const out = new Float32Array(data.length * times);
  for (let i = 0; i < times; i++) out.set(data, i * data.length);
  return out;
}
