// The tokenizers moved to src/tokenizers/; this path stays for existing importers.
export { WordTokenizer } from "../tokenizers/word.ts";
export type { TokenizedPrompt } from "../tokenizers/types.ts";
