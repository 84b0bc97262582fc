/**
 * The word tokenizer that the manifest's `tokenizer` section describes (type "word"): lowercase if asked,
 * split on anything that is not a letter or digit, map words through the vocabulary (unknown → unk),
 * wrap in bos/eos and pad to max_length, as CLIP's tokenizer frames its ids.
 */
import { readFileSync } from "node:fs";
import type { TokenizerSpec } from "@imagegen/formats/manifest";
import type { PromptTokenizer, TokenizedPrompt } from "./types.ts";

export class WordTokenizer implements PromptTokenizer {
  readonly kind = "word" as const;
  readonly spec: TokenizerSpec;
  readonly maxLength: number;
  private readonly vocab: ReadonlyMap<string, number>;

  constructor(spec: TokenizerSpec, vocab: ReadonlyMap<string, number>) {
    if (spec.max_length < 2) throw new Error(`tokenizer: max_length ${spec.max_length} leaves no room for bos and eos`);
    this.spec = spec;
    this.vocab = vocab;
    this.maxLength = spec.max_length;
  }

  /** Reads `vocab.json`: either `{ "word": id, ... }` or `["word", ...]` (id = position). */
  static fromFile(spec: TokenizerSpec, vocabPath: string): WordTokenizer {
    let parsed: unknown;
    try {
      parsed = JSON.parse(readFileSync(vocabPath, "utf8"));
    } catch (err) {
      throw new Error(`tokenizer: cannot read vocabulary ${vocabPath}: ${(err as Error).message}`);
    }
    return new WordTokenizer(spec, parseVocab(parsed, vocabPath));
  }

  /** Splits a prompt into the words the vocabulary is keyed by. */
  words(prompt: string): string[] {
    const text = this.spec.lowercase ? prompt.toLowerCase() : prompt;
    return text.split(/[^\p{L}\p{N}]+/u).filter((w) => w.length > 0);
  }

  encode(prompt: string): TokenizedPrompt {
    const { max_length, bos_id, eos_id, pad_id, unk_id } = this.spec;
    const words = this.words(prompt);
    const kept = words.slice(0, max_length - 2);
    const ids = [bos_id, ...kept.map((w) => this.vocab.get(w) ?? unk_id), eos_id];
    const attentionMask = ids.map(() => 1);
    while (ids.length < max_length) {
      ids.push(pad_id);
      attentionMask.push(0);
    }
    return { ids, attentionMask, truncated: words.length - kept.length };
  }
}

function parseVocab(parsed: unknown, path: string): Map<string, number> {
  const vocab = new Map<string, number>();
  if (Array.isArray(parsed)) {
    parsed.forEach((word, id) => {
      if (typeof word !== "string") throw new Error(`tokenizer: ${path}[${id}] is not a string`);
      vocab.set(word, id);
    });
  } else if (parsed !== null && typeof parsed === "object") {
    for (const [word, id] of Object.entries(parsed)) {
      if (!Number.isInteger(id) || (id as number) < 0)
        throw new Error(`tokenizer: ${path}: id of "${word}" is not an integer ≥ 0`);
      vocab.set(word, id as number);
    }
  } else {
    throw new Error(`tokenizer: ${path} must be an object {word: id} or an array of words`);
  }
  return vocab;
}
