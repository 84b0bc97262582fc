/** The pipeline's first step: the prompts through the tokenizer and the text encoder. */
import type * as ort from "onnxruntime-node";
import type { Bundle, Feeds } from "./bundle.ts";
import { floatTensor, GenerationError, tensorOf } from "./tensors.ts";

/**
 * The text conditioning of a U-Net batch, [rows, tokens, D]: one row per entry of `rows` (with classifier-free
 * guidance, the negative prompts first), each distinct prompt encoded once.
 */
export async function encodePrompt(bundle: Bundle, rows: readonly string[]): Promise<ort.Tensor> {
  const encoder = bundle.components.text_encoder;
  const encoded = new Map<string, { data: Float32Array; dims: readonly number[] }>();
  const encode = async (prompt: string) => {
    const known = encoded.get(prompt);
    if (known) return known;
    const tokens = bundle.tokenizer.encode(prompt);
    const specs = encoder.spec.inputs;
    const feeds: Feeds = {};
    for (const spec of specs) {
      if (spec === specs[0]) feeds[spec.name] = tensorOf(spec.dtype, tokens.ids, [1, tokens.ids.length]);
      else if (spec.name === "attention_mask") feeds[spec.name] = tensorOf(spec.dtype, tokens.attentionMask, [1, tokens.ids.length]);
      else throw new GenerationError(`text_encoder input "${spec.name}" is not token ids or attention_mask`);
    }
    const out = (await encoder.run(feeds))[encoder.spec.outputs[0]!.name]!;
    const result = { data: out.data as Float32Array, dims: out.dims };
    encoded.set(prompt, result);
    return result;
  };
  const states = [];
  for (const prompt of rows) states.push(await encode(prompt));
  const one = states[0]!.data.length;
  const data = new Float32Array(one * rows.length);
  states.forEach((st, i) => data.set(st.data, i * one));
  return floatTensor(data, [rows.length, ...states[0]!.dims.slice(1)]);
}
