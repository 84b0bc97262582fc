/** Messages between the pool (main thread) and an inference worker. */
import type { SessionConfig } from "../pipeline/bundle.ts";
import type { GenerationResult } from "../pipeline/pipeline.ts";
import type { GenerationRequest } from "../pipeline/request.ts";
import type { LoraLoadReport, RequestAddons } from "../addons/request-addons.ts";
import type { WireError } from "../errors.ts";

export interface WorkerInit {
  session: SessionConfig;
  /**
   * ControlNets in a worker of their own beside the U-Net's head (true), in sequence (false), or whichever measures
   * faster per model and ControlNet set ("auto", the default; addons/controlnet-mode.ts).
   */
  parallelControlNet?: boolean | "auto";
  /** See AddonRuntimeOptions. */
  mergeHotAfter?: number;
  /** See AddonRuntimeOptions. */
  foldLoras?: boolean;
}

export type ToWorker =
  | {
      type: "generate";
      id: number;
      bundleDir: string;
      /** Compatible requests (equal batchKey) run as one U-Net batch; usually one. */
      requests: GenerationRequest[];
      /** One Int32 the main thread sets to 1 to cancel; read between steps without waiting for a message. */
      cancelFlag: SharedArrayBuffer;
      /** Per request, the add-ons it applies (LoRA bytes and control images in shared memory). */
      addons?: RequestAddons[];
      /** The add-ons follow in an "addons" message; the generation waits for them by this fraction of its steps. */
      addonJoinFraction?: number;
      /** Per request, its LoRA set (`loraSetKey`), sent even when the add-ons follow later. */
      loraSets?: string[];
    }
  | { type: "addons"; id: number; addons: RequestAddons[] }
  | { type: "addons-failed"; id: number; error: WireError };

export type FromWorker =
  | { type: "progress"; id: number; step: number; steps: number }
  | {
      type: "result";
      id: number;
      results: GenerationResult[];
      addonsJoinedAt: number | null;
      lorasMerged: boolean;
      loraLoads: LoraLoadReport[][];
    }
  | { type: "error"; id: number; error: WireError };
