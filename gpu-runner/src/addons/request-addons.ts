/** What one request brings to a batch, as the runner hands it to an inference worker. */

/** Crosses the thread boundary: bytes in SharedArrayBuffers, no copy. */
export interface RequestAddons {
  loras: Array<{ sha256: string; bytes: Uint8Array; scale: number }>;
  /** `conditioning`: one sample's [C, H, W] in the ControlNet's range (see control-image.ts). */
  controlnets: Array<{ dir: string; conditioning: Float32Array; scale: number }>;
}

/** What identifies a request's LoRA set: its files' hashes and scales, in any order ("" for none). */
export function loraSetKey(loras: ReadonlyArray<{ sha256: string; scale: number }>): string {
  return loras.map((l) => `${l.sha256}:${l.scale}`).sort().join(",");
}
