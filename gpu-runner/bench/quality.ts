/**
 * The hook for quality columns. The zoo's evaluator (an ONNX network that scores generated images: attribute
 * accuracy, a Fréchet distance on its features, mask IoU, style detection) plugs in here; until it exists the
 * bench reports only a fidelity proxy it can compute itself (how far caching moves the latents).
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import type { GenerationResult } from "../src/pipeline/pipeline.ts";

export interface ScoredPrompt {
  prompt: string;
  result: GenerationResult;
}

export interface QualityEvaluator {
  /** Column names, in report order, e.g. ["attribute acc.", "FD"]. */
  readonly columns: readonly string[];
  /** Scores a set of generations of one configuration (held-out seeds) into one value per column. */
  score(samples: readonly ScoredPrompt[]): Promise<Record<string, number>>;
}

/**
 * Returns the evaluator when the zoo has committed one, else null. Wiring the zoo's evaluator means implementing
 * `QualityEvaluator` over its ONNX file (its input/output contract comes with it) and returning it here.
 */
export async function loadEvaluator(zooModels: string): Promise<QualityEvaluator | null> {
  const dir = join(zooModels, "evaluator");
  if (!existsSync(join(dir, "manifest.json")) && !existsSync(join(dir, "model.onnx"))) return null;
  process.stderr.write(`bench: an evaluator exists at ${dir} but is not wired yet (bench/quality.ts); quality columns stay empty\n`);
  return null;
}

/** ‖a − b‖ / ‖b‖ over final latents: 0 when caching changes nothing. */
export function relativeLatentChange(a: Float32Array, b: Float32Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < b.length; i++) {
    num += (a[i]! - b[i]!) ** 2;
    den += b[i]! ** 2;
  }
  return Math.sqrt(num / den);
}
