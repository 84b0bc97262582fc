import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ClipTokenizer, loadTokenizer } from "../src/tokenizers/index.ts";

// Written by gpu-runner/sd-fixtures/tokenizer_refs.py from transformers.CLIPTokenizer.
const REFS = join(import.meta.dirname, "fixtures", "sd-refs", "tokenizer");
interface Cases {
  max_length: number;
  pad_ids: Record<"clip" | "clip-pad-bang", number>;
  cases: { text: string; ids: number[] }[];
  pad_bang_ids: Record<string, number[]>;
}
const refs = JSON.parse(readFileSync(join(REFS, "cases.json"), "utf8")) as Cases;

function mismatches(tokenizer: ClipTokenizer, expected: (i: number) => number[], padId: number): string[] {
  const bad: string[] = [];
  refs.cases.forEach(({ text }, i) => {
    const ids = expected(i);
    const want = [...ids, ...Array<number>(refs.max_length - ids.length).fill(padId)];
    const got = tokenizer.encode(text).ids;
    if (got.length !== want.length || got.some((v, k) => v !== want[k]))
      bad.push(`#${i} ${JSON.stringify(text).slice(0, 60)}: ${got.join(",")} ≠ ${want.join(",")}`);
  });
  return bad;
}

describe("CLIP tokenizer parity with transformers.CLIPTokenizer", () => {
  it(`matches the reference ids on all ${refs.cases.length} strings (pad = <|endoftext|>, SD 1.x)`, () => {
    expect(refs.cases.length).toBeGreaterThanOrEqual(1000);
    const t = ClipTokenizer.fromDir(join(REFS, "clip"));
    expect(t.padId).toBe(refs.pad_ids.clip);
    expect(t.padId).toBe(t.eosId);
    expect(mismatches(t, (i) => refs.cases[i]!.ids, refs.pad_ids.clip)).toEqual([]);
  });

  it(`matches with pad = "!" (id 0; SD 2.x, SDXL tokenizer_2), where "!" in the text is a special token`, () => {
    const t = ClipTokenizer.fromDir(join(REFS, "clip-pad-bang"));
    expect(t.padId).toBe(0);
    expect(Object.keys(refs.pad_bang_ids).length).toBeGreaterThan(0); // the "!" split is exercised
    expect(mismatches(t, (i) => refs.pad_bang_ids[i] ?? refs.cases[i]!.ids, refs.pad_ids["clip-pad-bang"])).toEqual([]);
  });

  it("frames ids as bos, ≤ 75 tokens, eos, padding, and counts what truncation dropped", () => {
    const t = ClipTokenizer.fromDir(join(REFS, "clip"));
    const long = t.encode(Array(200).fill("castle").join(" "));
    expect(long.ids).toHaveLength(77);
    expect(long.ids[0]).toBe(t.bosId);
    expect(long.ids[76]).toBe(t.eosId);
    expect(long.attentionMask.every((m) => m === 1)).toBe(true);
    expect(long.truncated).toBe(200 - 75);
    const empty = t.encode("");
    expect(empty.ids.slice(0, 2)).toEqual([t.bosId, t.eosId]);
    expect(empty.attentionMask.filter((m) => m === 1)).toHaveLength(2);
  });

  it("loadTokenizer picks CLIP for a folder with merges.txt and the word tokenizer for a manifest that declares one", () => {
    expect(loadTokenizer(join(REFS, "clip")).kind).toBe("clip");
    const models = join(import.meta.dirname, "..", "models", "tiny-shapes-lcm");
    const spec = JSON.parse(readFileSync(join(models, "manifest.json"), "utf8")).tokenizer;
    expect(loadTokenizer(join(models, "tokenizer"), spec).kind).toBe("word");
  });
});
