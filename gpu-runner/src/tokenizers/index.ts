/**
 * Chooses a bundle's tokenizer from its `tokenizer/` folder: a CLIP BPE export (vocab.json + merges.txt, the
 * diffusers layout) or the tiny-shapes word tokenizer that the manifest's `tokenizer` section describes.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import type { TokenizerSpec } from "@imagegen/formats/manifest";
import { ClipTokenizer } from "./clip.ts";
import type { PromptTokenizer } from "./types.ts";
import { WordTokenizer } from "./word.ts";

export function loadTokenizer(dir: string, spec?: TokenizerSpec): PromptTokenizer {
  if (spec?.type === "word") return WordTokenizer.fromFile(spec, join(dir, spec.vocab));
  if (existsSync(join(dir, "merges.txt"))) return ClipTokenizer.fromDir(dir);
  throw new Error(`tokenizer: ${dir} has no merges.txt (CLIP BPE) and the manifest declares no word tokenizer`);
}

export { ClipTokenizer } from "./clip.ts";
export { WordTokenizer } from "./word.ts";
export type { PromptTokenizer, TokenizedPrompt } from "./types.ts";
