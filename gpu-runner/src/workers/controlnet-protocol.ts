/**
 * Messages and shared-memory layout between an inference worker and its ControlNet worker (controlnet-worker.ts):
 * a batch is set up by one message; each step crosses threads through SharedArrayBuffers and Atomics only.
 */
import type { ModelManifest } from "@imagegen/formats/manifest";
import type { WireError } from "../errors.ts";

export interface PlainTensor {
  data: Float32Array;
  dims: number[];
}

/** The Int32 slots of a batch's control buffer. */
export const CONTROL = {
  /** Steps requested so far (the inference worker increments it after writing a step's inputs). */
  requested: 0,
  /** Steps done so far (this worker increments it after writing the step's residuals, or failing). */
  done: 1,
  /** 0 while healthy; 1 once a step failed (its error follows as a message). */
  failed: 2,
  /** 1 when the batch is over: the worker stops waiting. */
  closed: 3,
} as const;
export const CONTROL_SLOTS = 4;

/** A residual in shared memory: written here each step, read in place by the U-Net. */
export interface SharedResidual {
  buffer: SharedArrayBuffer;
  dims: number[];
}

export type ToControlNet =
  | {
      type: "batch";
      id: number;
      base: ModelManifest;
      uses: Array<{ dir: string; conditioning: Float32Array; scales: Float32Array }>;
      /** Int32 slots (CONTROL). */
      control: SharedArrayBuffer;
      sample: SharedArrayBuffer;
      sampleDims: number[];
      timestep: SharedArrayBuffer;
      timestepDims: number[];
      encoderHiddenStates: PlainTensor;
    }
  | { type: "end"; id: number };

export type FromControlNet =
  /** After the batch's first step: where its residuals lie (the same buffers every later step). */
  | { type: "residuals"; id: number; residuals: Record<string, SharedResidual> }
  | { type: "error"; id: number; error: WireError };

type WaitResult =
  | { async: false; value: "not-equal" | "timed-out" }
  | { async: true; value: Promise<"ok" | "timed-out"> };

/** `Atomics.waitAsync` (Node 16+; typed here: the project's lib predates it). Waits without blocking the thread. */
export const waitAsync = (array: Int32Array, index: number, value: number): WaitResult =>
  (Atomics as unknown as { waitAsync(a: Int32Array, i: number, v: number): WaitResult }).waitAsync(array, index, value);
