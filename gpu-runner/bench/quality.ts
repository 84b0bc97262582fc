/**
 * Quality columns of the benches: generations of held-out prompts scored by the zoo's evaluator
 * (`src/eval/evaluator.ts`), and a fidelity proxy that needs no evaluator (how far caching moves the latents).
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { ImageEvaluator, type HeldoutPrompt, type QualityScores } from "../src/eval/evaluator.ts";
import type { Bundle } from "../src/pipeline/bundle.ts";
import { generateBatch, type GenerateOptions } from "../src/pipeline/pipeline.ts";
import type { GenerationRequest } from "../src/pipeline/request.ts";

/** The zoo's evaluator when it is committed, else null (the columns then say why they are empty). */
export async function loadEvaluator(zooModels: string): Promise<ImageEvaluator | null> {
  const dir = join(zooModels, "evaluator");
  return existsSync(join(dir, "evaluator.json")) ? ImageEvaluator.load(dir) : null;
}

/** Per-prompt and per-batch settings of a scored configuration (add-ons, styled prompts). */
export interface ConfigurationPlan {
  /** The prompt text for a held-out prompt and the styles its image should show (default: as is, none). */
  prompt?: (p: HeldoutPrompt) => { text: string; styles?: string[] };
  /** Generate options for one batch of prompts (an add-on provider, for example). */
  options?: (batch: readonly HeldoutPrompt[]) => GenerateOptions | Promise<GenerateOptions>;
}

/**
 * Generates the first `n` held-out prompts with `base`'s settings (seed 5000 + prompt index, one image each, in
 * batches of 16 compatible requests) and scores them against the attributes (and styles) the prompts ask for.
 */
export async function scoreConfiguration(
  evaluator: ImageEvaluator,
  bundle: Bundle,
  base: Omit<GenerationRequest, "prompt" | "seed">,
  n: number,
  plan: ConfigurationPlan = {},
): Promise<QualityScores> {
  const prompts = evaluator.heldout.slice(0, n);
  const texts = prompts.map((p) => plan.prompt?.(p) ?? { text: p.prompt });
  const images: Uint8Array[] = [];
  for (let i = 0; i < prompts.length; i += 16) {
    const chunk = prompts.slice(i, i + 16);
    const options = (await plan.options?.(chunk)) ?? {};
    const results = await generateBatch(
      bundle,
      chunk.map((p, j) => ({ ...base, prompt: texts[i + j]!.text, seed: 5000 + p.index, n: 1 })),
      options,
    );
    images.push(...results.map((r) => r.images[0]!));
  }
  const styles = texts.map((t) => t.styles ?? []);
  return evaluator.score(
    images,
    prompts.map((p) => p.attributes),
    styles.some((l) => l.length) ? { styles } : {},
  );
}

/** "0.997 · FD 396" */
export function formatQuality(q: QualityScores): string {
  return `${q.mean.toFixed(3)} · FD ${q.fd.toFixed(0)}`;
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
