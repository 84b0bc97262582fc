/** What one request brings to a batch, as the runner hands it to an inference worker. */

/** Crosses the thread boundary: bytes in SharedArrayBuffers, no copy. */
export interface RequestAddons {
  /** `allowPartial`: the request opted in to a file some of whose keys match no layer of the model (skipped). */
  loras: Array<{ sha256: string; bytes: Uint8Array; scale: number; allowPartial?: boolean }>;
  /** `conditioning`: one sample's [C, H, W] in the ControlNet's range (see control-image.ts). */
  controlnets: Array<{ dir: string; conditioning: Float32Array; scale: number }>;
}

/** What identifies a request's LoRA set: its files' hashes and scales, in any order ("" for none). */
export function loraSetKey(loras: ReadonlyArray<{ sha256: string; scale: number }>): string {
  return loras
    .map((l) => `${l.sha256}:${l.scale}`)
    .sort()
    .join(",");
}

/** How a LoRA file mapped onto the model it ran on: its keys used of its total (less only with allow_partial). */
export interface LoraLoadReport {
  sha256: string;
  mapped: number;
  total: number;
}
