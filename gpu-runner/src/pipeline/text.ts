/**
 * The pipeline's first step: the prompts through the tokenizer(s) and text encoder(s), into the U-Net's text
 * conditioning. Bundles without `text_conditioning` (the zoo's) take the text encoder's first output; imported
 * Stable Diffusion models follow diffusers' `encode_prompt`: SD 1.x/2.x `last_hidden_state`, SDXL the penultimate
 * hidden states of both encoders concatenated, the second's pooled projection as `text_embeds`, and `time_ids`.
 */
import type * as ort from "onnxruntime-node";
import type { PromptTokenizer } from "../tokenizers/index.ts";
import type { Bundle, Component, Feeds } from "./bundle.ts";
import { floatTensor, GenerationError, tensorOf } from "./tensors.ts";

export interface TextConditioning {
  /** [rows, tokens, D]: one row per prompt row (with classifier-free guidance, the negative prompts first). */
  encoderHiddenStates: ort.Tensor;
  /** Further U-Net inputs the text decides (SDXL: `text_embeds`, `time_ids`), batched like the rows. */
  unetInputs: Feeds;
}

export interface PromptRows {
  /** The prompts, one per U-Net batch row. */
  rows: readonly string[];
  /** How many leading rows are the unconditional (negative) prompts of classifier-free guidance. */
  unconditional: number;
  /** The image size: SDXL's `time_ids` are (original size, crop (0, 0), target size) = (size, (0, 0), size). */
  width: number;
  height: number;
  /** Extra inputs of the text encoders per row (LoRA branches); rank-0 branches where absent. */
  encoderInputs?: TextEncoderInputs;
}

export type TextEncoderName = "text_encoder" | "text_encoder_2";

/**
 * A batch's text-encoder LoRA branches, per prompt row (a row's request brings its own LoRA set): rows whose `key`
 * is equal get the same feeds, so a prompt is encoded once per LoRA set.
 */
export interface TextEncoderInputs {
  key(row: number): string;
  feeds(row: number, encoder: TextEncoderName): Feeds;
}

type Encoded = { data: Float32Array; dims: readonly number[] };

/** Rank-0 LoRA branches of a text encoder (batch 1: prompts are encoded one at a time): the encoder without LoRA. */
function rankZeroBranches(bundle: Bundle, encoder: Component): Feeds {
  const names = new Set((bundle.manifest.lora?.targets ?? []).flatMap((t) => [t.down_input, t.up_input]));
  const feeds: Feeds = {};
  for (const spec of encoder.spec.inputs) {
    if (!names.has(spec.name)) continue;
    const dims = spec.shape.map((d) => (typeof d === "number" ? d : d === "batch" ? 1 : 0));
    feeds[spec.name] = floatTensor(new Float32Array(0), dims);
  }
  return feeds;
}

/** Token ids through one text encoder; returns the named outputs of one prompt row, each distinct (prompt, LoRA set) run once. */
function encoderRunner(
  bundle: Bundle,
  encoder: Component,
  tokenizer: PromptTokenizer,
  outputs: readonly string[],
  inputs?: TextEncoderInputs,
) {
  const cache = new Map<string, Promise<Encoded[]>>();
  const zeros = rankZeroBranches(bundle, encoder);
  const run = async (prompt: string, extra: Feeds): Promise<Encoded[]> => {
    const tokens = tokenizer.encode(prompt);
    const specs = encoder.spec.inputs;
    const feeds: Feeds = {};
    for (const spec of specs) {
      if (spec === specs[0]) feeds[spec.name] = tensorOf(spec.dtype, tokens.ids, [1, tokens.ids.length]);
      else if (spec.name === "attention_mask")
        feeds[spec.name] = tensorOf(spec.dtype, tokens.attentionMask, [1, tokens.ids.length]);
      else if (extra[spec.name] !== undefined) feeds[spec.name] = extra[spec.name]!;
      else if (zeros[spec.name] !== undefined) feeds[spec.name] = zeros[spec.name]!;
      else throw new GenerationError(`${encoder.name} input "${spec.name}" is not token ids or attention_mask`);
    }
    const out = await encoder.run(feeds);
    return outputs.map((name) => {
      const t = out[name];
      if (t === undefined) throw new GenerationError(`${encoder.name} gave no output "${name}"`);
      return { data: t.data as Float32Array, dims: t.dims };
    });
  };
  return (prompt: string, row: number): Promise<Encoded[]> => {
    const key = `${inputs?.key(row) ?? ""}\u0000${prompt}`;
    let known = cache.get(key);
    if (known === undefined)
      cache.set(key, (known = run(prompt, inputs?.feeds(row, encoder.name as TextEncoderName) ?? {})));
    return known;
  };
}

/** Per-row vectors stacked into [rows, ...dims of one row]; zero rows where `zero(i)`. */
function stack(parts: readonly Encoded[], zero: (i: number) => boolean): ort.Tensor {
  const one = parts[0]!.data.length;
  const data = new Float32Array(one * parts.length);
  parts.forEach((p, i) => {
    if (!zero(i)) data.set(p.data, i * one);
  });
  return floatTensor(data, [parts.length, ...parts[0]!.dims.slice(1)]);
}

/** Concatenates [1, tokens, Da] and [1, tokens, Db] on the last axis. */
function concatLast(a: Encoded, b: Encoded): Encoded {
  const tokens = a.dims[1]!;
  const da = a.dims[2]!;
  const db = b.dims[2]!;
  if (b.dims[1] !== tokens)
    throw new GenerationError(
      `text encoders gave ${tokens} and ${b.dims[1]} tokens; their states cannot be concatenated`,
    );
  const data = new Float32Array(tokens * (da + db));
  for (let t = 0; t < tokens; t++) {
    data.set(a.data.subarray(t * da, (t + 1) * da), t * (da + db));
    data.set(b.data.subarray(t * db, (t + 1) * db), t * (da + db) + da);
  }
  return { data, dims: [1, tokens, da + db] };
}

/** The U-Net's text conditioning for a batch of prompt rows. */
export async function encodePrompt(bundle: Bundle, prompts: PromptRows): Promise<TextConditioning> {
  const { rows, unconditional } = prompts;
  const tc = bundle.manifest.text_conditioning;
  const c = bundle.components;
  if (tc === undefined) {
    const first = c.text_encoder.spec.outputs[0]!.name;
    const encode = encoderRunner(bundle, c.text_encoder, bundle.tokenizer, [first], prompts.encoderInputs);
    const states: Encoded[] = [];
    for (const [row, prompt] of rows.entries()) states.push((await encode(prompt, row))[0]!);
    return { encoderHiddenStates: stack(states, () => false), unetInputs: {} };
  }

  const pooledFrom = tc.pooled?.component;
  const encoders = tc.hidden_states.map((hidden, i) => {
    const name = i === 0 ? "text_encoder" : "text_encoder_2";
    const component = c[name];
    const tokenizer = i === 0 ? bundle.tokenizer : bundle.tokenizer2;
    if (component === undefined || tokenizer === undefined)
      throw new GenerationError(`model ${bundle.manifest.name}: ${name} or its tokenizer is not loaded`);
    const outputs = [hidden, ...(pooledFrom === name ? [tc.pooled!.output] : [])];
    return { name, run: encoderRunner(bundle, component, tokenizer, outputs, prompts.encoderInputs) };
  });
  // diffusers (SDXL, force_zeros_for_empty_prompt): no negative prompt means zero unconditional embeddings.
  const zero = (i: number) => tc.zero_empty_negative === true && i < unconditional && rows[i] === "";
  const states: Encoded[] = [];
  const pooled: Encoded[] = [];
  for (const [row, prompt] of rows.entries()) {
    let state: Encoded | undefined;
    for (const encoder of encoders) {
      const [hidden, pool] = await encoder.run(prompt, row);
      state = state === undefined ? hidden! : concatLast(state, hidden!);
      if (pool !== undefined) pooled.push(pool);
    }
    states.push(state!);
  }
  const unetInputs: Feeds = {};
  if (tc.pooled) unetInputs[tc.pooled.unet_input] = stack(pooled, zero);
  if (tc.time_ids) {
    const ids = [prompts.height, prompts.width, 0, 0, prompts.height, prompts.width];
    const data = new Float32Array(rows.length * ids.length);
    for (let i = 0; i < rows.length; i++) data.set(ids, i * ids.length);
    unetInputs[tc.time_ids.unet_input] = floatTensor(data, [rows.length, ids.length]);
  }
  return { encoderHiddenStates: stack(states, zero), unetInputs };
}
