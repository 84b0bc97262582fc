/**
 * CLIP's tokenizer as diffusers' Stable Diffusion pipelines run it: transformers' `CLIPTokenizer` (the Python
 * one, without ftfy) over an export's `vocab.json` + `merges.txt`, framed to `model_max_length` ids. The BPE, the
 * byte-level mapping, the regex split and added-token handling are @huggingface/tokenizers'; this file only
 * writes the tokenizer.json configuration that reproduces `CLIPTokenizer`, which differs from the Rust
 * `CLIPTokenizerFast` conversion on purpose: `CLIPTokenizer` first runs BERT's clean-up (control and format
 * characters such as ZWJ are dropped, CJK ideographs become words of their own) and lowercases with final sigma.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Tokenizer } from "@huggingface/tokenizers";
import type { PromptTokenizer, TokenizedPrompt } from "./types.ts";

/** CLIP's pre-tokenisation regex (transformers' `CLIPTokenizer.pat` without the special tokens, split earlier). */
const CLIP_SPLIT = String.raw`'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`;
/** BasicTokenizer._clean_text: every category-C character except \t \n \r goes, and U+FFFD too. */
const CONTROL = String.raw`(?![\t\n\r])[\p{C}\x{FFFD}]`;
/** BasicTokenizer._is_chinese_char: these code points become single-character words. */
const CJK = String.raw`[\x{4E00}-\x{9FFF}\x{3400}-\x{4DBF}\x{20000}-\x{2A6DF}\x{2A700}-\x{2B73F}\x{2B740}-\x{2B81F}\x{2B820}-\x{2CEAF}\x{F900}-\x{FAFF}\x{2F800}-\x{2FA1F}]`;
/** transformers reads at most this many merges (CLIP's 49152-token vocabulary less bytes and specials). */
const MAX_MERGES = 49152 - 256 - 2;

type SpecialRole = "bos_token" | "eos_token" | "unk_token" | "pad_token";
const ROLES: readonly SpecialRole[] = ["bos_token", "eos_token", "unk_token", "pad_token"];
/** transformers' CLIPTokenizer defaults, used when an export's configs do not name a token. */
const DEFAULTS: Record<SpecialRole, string> = {
  bos_token: "<|startoftext|>",
  eos_token: "<|endoftext|>",
  unk_token: "<|endoftext|>",
  pad_token: "<|endoftext|>",
};

interface AddedTokenJson {
  id: number;
  content: string;
  single_word: boolean;
  lstrip: boolean;
  rstrip: boolean;
  normalized: boolean;
  special: boolean;
}

export interface ClipTokenizerFiles {
  vocab: Record<string, number>;
  /** merges.txt as written (first line `#version: …`). */
  merges: string;
  /** tokenizer_config.json merged over special_tokens_map.json. */
  config: Record<string, unknown>;
}

export class ClipTokenizer implements PromptTokenizer {
  readonly kind = "clip" as const;
  readonly maxLength: number;
  readonly bosId: number;
  readonly eosId: number;
  readonly padId: number;
  private readonly tokenizer: Tokenizer;

  constructor(files: ClipTokenizerFiles) {
    const { vocab, config } = files;
    const tokenOf = (role: SpecialRole): string => {
      const v = config[role];
      if (typeof v === "string") return v;
      if (v !== null && typeof v === "object" && typeof (v as { content?: unknown }).content === "string")
        return (v as { content: string }).content;
      return DEFAULTS[role];
    };
    const idOf = (token: string, role: string): number => {
      const id = vocab[token];
      if (id === undefined) throw new Error(`clip tokenizer: ${role} ${JSON.stringify(token)} is not in vocab.json`);
      return id;
    };
    this.bosId = idOf(tokenOf("bos_token"), "bos_token");
    this.eosId = idOf(tokenOf("eos_token"), "eos_token");
    this.padId = idOf(tokenOf("pad_token"), "pad_token");
    const maxLength = config.model_max_length;
    // Exports save huge sentinels (1e30) when no length was set; CLIP's text encoders take 77.
    this.maxLength =
      typeof maxLength === "number" && Number.isInteger(maxLength) && maxLength >= 2 && maxLength <= 4096
        ? maxLength
        : 77;

    // transformers splits every special token out of the raw text before any normalisation, whatever its
    // `normalized` flag says, so they are all declared unnormalized here; a pad of "!" (OpenCLIP) is one of them.
    const added = new Map<string, AddedTokenJson>();
    for (const role of ROLES) {
      const content = tokenOf(role);
      added.set(content, {
        id: idOf(content, role),
        content,
        single_word: false,
        lstrip: false,
        rstrip: false,
        normalized: false,
        special: true,
      });
    }
    const decoder = config.added_tokens_decoder;
    if (decoder !== null && typeof decoder === "object") {
      for (const [id, t] of Object.entries(decoder as Record<string, Partial<AddedTokenJson>>)) {
        if (typeof t.content !== "string") continue;
        added.set(t.content, {
          id: Number(id),
          content: t.content,
          single_word: false,
          lstrip: !!t.lstrip,
          rstrip: !!t.rstrip,
          normalized: false,
          special: true,
        });
      }
    }

    const merges = files.merges
      .trim()
      .split("\n")
      .slice(1, MAX_MERGES + 1)
      .map((line) => line.trim().split(/\s+/));
    this.tokenizer = new Tokenizer(
      {
        version: "1.0",
        truncation: null,
        padding: null,
        added_tokens: [...added.values()],
        normalizer: {
          type: "Sequence",
          normalizers: [
            { type: "Replace", pattern: { Regex: CONTROL }, content: "" },
            { type: "NFC" },
            { type: "Lowercase" },
          ],
        },
        pre_tokenizer: {
          type: "Sequence",
          pretokenizers: [
            { type: "Split", pattern: { Regex: CJK }, behavior: "Isolated", invert: false },
            { type: "Split", pattern: { Regex: CLIP_SPLIT }, behavior: "Removed", invert: true },
            { type: "ByteLevel", add_prefix_space: false, trim_offsets: false, use_regex: false },
          ],
        },
        post_processor: null,
        decoder: { type: "ByteLevel", add_prefix_space: false, trim_offsets: false, use_regex: false },
        model: {
          type: "BPE",
          dropout: null,
          unk_token: tokenOf("unk_token"),
          continuing_subword_prefix: "",
          end_of_word_suffix: "</w>",
          fuse_unk: false,
          byte_fallback: false,
          ignore_merges: false,
          vocab,
          merges,
        },
      },
      {},
    );
  }

  /** Reads an export's tokenizer folder (SD layout: `tokenizer/`, `tokenizer_2/`). */
  static fromDir(dir: string): ClipTokenizer {
    const read = (name: string): unknown => JSON.parse(readFileSync(join(dir, name), "utf8"));
    const config: Record<string, unknown> = {};
    for (const name of ["special_tokens_map.json", "tokenizer_config.json"]) {
      if (existsSync(join(dir, name))) Object.assign(config, read(name));
    }
    return new ClipTokenizer({
      vocab: read("vocab.json") as Record<string, number>,
      merges: readFileSync(join(dir, "merges.txt"), "utf8"),
      config,
    });
  }

  /** The prompt's BPE ids without bos/eos/padding. */
  tokenIds(prompt: string): number[] {
    return this.tokenizer.encode(prompt, { add_special_tokens: false }).ids;
  }

  /** bos, at most maxLength − 2 tokens, eos, then pad ids up to maxLength (truncation=True, padding="max_length"). */
  encode(prompt: string): TokenizedPrompt {
    const tokens = this.tokenIds(prompt);
    const kept = tokens.slice(0, this.maxLength - 2);
    const ids = [this.bosId, ...kept, this.eosId];
    const attentionMask = ids.map(() => 1);
    while (ids.length < this.maxLength) {
      ids.push(this.padId);
      attentionMask.push(0);
    }
    return { ids, attentionMask, truncated: tokens.length - kept.length };
  }
}
