import { readdirSync, readFileSync } from "node:fs";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { z } from "zod";
import { fuzz, fuzzTimeout, mutated, parses } from "../fuzz/harness.ts";
import { BundleManifest, ControlNetManifest, controlNetMismatches } from "./manifest.ts";

const S = "manifest";
const MODELS = new URL("../../gpu-runner/models/", import.meta.url);
/** Every committed manifest: the models' and their ControlNets'. */
const COMMITTED = readdirSync(MODELS, { recursive: true, encoding: "utf8" })
  .filter((p) => p.endsWith("manifest.json"))
  .map((p) => readFileSync(new URL(p, MODELS), "utf8"));

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

/** Every path to a value in `v`, the root included. */
function paths(v: Json, at: Array<string | number> = []): Array<Array<string | number>> {
  const out = [at];
  if (Array.isArray(v)) v.forEach((x, i) => out.push(...paths(x, [...at, i])));
  else if (v !== null && typeof v === "object")
    for (const [k, x] of Object.entries(v)) out.push(...paths(x, [...at, k]));
  return out;
}

type Edit =
  | { op: "set"; at: number; value: Json }
  | { op: "delete"; at: number }
  | { op: "add"; at: number; key: string; value: Json };

/** Applies `e` in place (the caller's copy): returns the new root. */
function edit(copy: Json, e: Edit): Json {
  const all = paths(copy);
  const path = all[e.at % all.length]!;
  if (path.length === 0) return e.op === "set" ? e.value : copy;
  let parent = copy as Record<string | number, Json>;
  for (const k of path.slice(0, -1)) parent = parent[k] as Record<string | number, Json>;
  const last = path.at(-1)!;
  if (e.op === "set") parent[last] = e.value;
  else if (e.op === "delete") {
    if (Array.isArray(parent)) parent.splice(last as number, 1);
    else delete parent[last];
  } else {
    const target = parent[last];
    if (target !== null && typeof target === "object" && !Array.isArray(target))
      Object.defineProperty(target, e.key, { value: e.value, enumerable: true, writable: true, configurable: true });
    else if (Array.isArray(target)) target.push(e.value);
  }
  return copy;
}

const odd: fc.Arbitrary<Json> = fc.oneof(
  fc.constantFrom(
    0,
    -1,
    1.5,
    2 ** 53,
    -(2 ** 63),
    1e308,
    "",
    "batch",
    "../../etc/passwd",
    "controlnet/model.onnx",
    null,
    true,
    [],
    {},
  ),
  fc.jsonValue({ maxDepth: 3 }) as fc.Arbitrary<Json>,
);
const editArb: fc.Arbitrary<Edit> = fc.oneof(
  fc.record({ op: fc.constant("set" as const), at: fc.nat(), value: odd }),
  fc.record({ op: fc.constant("delete" as const), at: fc.nat() }),
  fc.record({
    op: fc.constant("add" as const),
    at: fc.nat(),
    key: fc.oneof(fc.constantFrom("__proto__", "constructor", "toString", "kind"), fc.string({ maxLength: 8 })),
    value: odd,
  }),
);
const editedManifest = fc
  .tuple(fc.constantFrom(...COMMITTED), fc.array(editArb, { minLength: 1, maxLength: 5 }))
  .map(([text, edits]) => edits.reduce(edit, JSON.parse(text) as Json)); // a fresh copy per sample

/** What the edge does with an uploaded manifest.json, and the runner's bundle loader after it. */
function check(json: unknown, inputBytes: number): void {
  for (const schema of [BundleManifest, ControlNetManifest]) {
    const result = parses(inputBytes, [], () => schema.safeParse(json));
    if (result?.success && result.data.kind === "controlnet") {
      const problems = parses(inputBytes, [], () =>
        controlNetMismatches(result.data as ControlNetManifest, {
          name: "m",
          family: "tiny-shapes",
          residuals: ["a", "b"],
        }),
      );
      expect(problems?.every((p) => typeof p === "string")).toBe(true);
    }
  }
}

const checkParsed = (json: Json) => {
  // parse throws a ZodError and nothing else.
  for (const schema of [BundleManifest, ControlNetManifest]) {
    try {
      schema.parse(json);
    } catch (err) {
      expect(err).toBeInstanceOf(z.ZodError);
    }
  }
  check(json, JSON.stringify(json)?.length ?? 0);
};

describe("bundle manifests under fuzzing", () => {
  it("validate the committed manifests", () => {
    expect(COMMITTED.length).toBeGreaterThanOrEqual(2);
    for (const text of COMMITTED) expect(BundleManifest.safeParse(JSON.parse(text)).success).toBe(true);
  });

  it(
    "refuse edited manifests (odd values, deleted and added keys, __proto__) with a ZodError",
    () => fuzz(S, "edited manifests", editedManifest, checkParsed, 400),
    fuzzTimeout(),
  );

  it(
    "refuse arbitrary JSON with a ZodError",
    () => fuzz(S, "arbitrary JSON", fc.jsonValue({ maxDepth: 6 }) as fc.Arbitrary<Json>, checkParsed, 800),
    fuzzTimeout(),
  );

  it(
    "take mutated manifest bytes as the edge does: JSON.parse's SyntaxError or a verdict",
    () =>
      fuzz(
        S,
        "mutated manifest bytes",
        mutated(fc.constantFrom(...COMMITTED.map((t) => new TextEncoder().encode(t)))),
        (bytes) => {
          const json = parses(bytes.byteLength, [SyntaxError], () => JSON.parse(new TextDecoder().decode(bytes)));
          if (json !== undefined) check(json, bytes.byteLength);
        },
        1500,
      ),
    fuzzTimeout(),
  );

  it("refuses a manifest nested 100 000 levels deep without overflowing the stack", () => {
    const deep = `{"schema_version":1,"kind":"controlnet","residuals":{"a":${"[".repeat(100_000)}${"]".repeat(100_000)}}}`;
    const json = parses(deep.length, [], () => JSON.parse(deep));
    expect(parses(deep.length, [], () => ControlNetManifest.safeParse(json))?.success).toBe(false);
  });
});
