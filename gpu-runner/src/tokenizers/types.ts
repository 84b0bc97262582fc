/** What the pipeline needs from a tokenizer, whichever kind the bundle ships. */
export interface TokenizedPrompt {
  /** Token ids, exactly `maxLength` long. */
  ids: number[];
  /** 1 for bos, tokens and eos; 0 for padding. */
  attentionMask: number[];
  /** Tokens (words for the word tokenizer) dropped because the prompt was longer than maxLength − 2. */
  truncated: number;
}

export interface PromptTokenizer {
  readonly kind: "word" | "clip";
  /** The text encoder's sequence length (77 for CLIP). */
  readonly maxLength: number;
  encode(prompt: string): TokenizedPrompt;
}
