/**
 * What a change to the U-Net graph costs a request that does not use it (`npm run bench:graph -w gpu-runner --
 * --a <bundle> --b <bundle>`): the `unet` component of two bundles of one model, run on the same inputs with no
 * LoRA (every branch at rank 0) and zero residuals, rounds interleaved (a, b, a, b, ...), medians reported.
 * Written for LoRA v5, whose graph gained 16 convolution branches (LoCon): `--a` the bundle before (e.g. checked
 * out from git into /tmp), `--b` after. Appends nothing to the repo unless `--out <file.md>` is given.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import * as ort from "onnxruntime-node";
import type { ModelManifest } from "@imagegen/formats/manifest";
import { median } from "./stats.ts";

const { values: args } = parseArgs({
  options: {
    a: { type: "string" },
    b: { type: "string" },
    rounds: { type: "string", default: "200" },
    out: { type: "string" },
  },
});
if (!args.a || !args.b)
  throw new Error("usage: graph-cost.ts --a <bundle dir> --b <bundle dir> [--rounds n] [--out file.md]");
const ROUNDS = Number(args.rounds);

/** The symbolic axes of an Optimum export's U-Net (gpu-runner/src/import/), sized as the SD fixtures' 64×64 run. */
const IMPORTED_AXES: Record<string, number> = { height: 8, width: 8, sequence_length: 77 };
/** Zoo branch inputs are `lora_<i>_down`, an imported graph's `lora.<module>.down`. */
const isLora = (name: string) => name.startsWith("lora_") || name.startsWith("lora.");

async function open(dir: string) {
  // Read, not validated: only the unet component is needed (a bundle half-written by an experiment will do).
  const m = JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8")) as ModelManifest;
  const spec = m.components.unet!;
  const session = await ort.InferenceSession.create(join(dir, spec.path), {
    intraOpNumThreads: 1,
    interOpNumThreads: 1,
  });
  const feeds = (batch: number) => {
    const f: Record<string, ort.Tensor> = {};
    for (const t of spec.inputs) {
      // Symbolic dims: batch, an imported export's own axes (an 8×8 latent, 77 tokens), or a LoRA rank (0: no LoRA).
      const dims = t.shape.map((d) =>
        typeof d === "number" ? d : d === "batch" || d === "batch_size" ? batch : (IMPORTED_AXES[d] ?? 0),
      );
      const n = dims.reduce((a, d) => a * d, 1);
      const data =
        t.name === "timestep"
          ? new Float32Array(n).fill(500)
          : t.name.includes("residual") || isLora(t.name)
            ? new Float32Array(n)
            : Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.37));
      f[t.name] = new ort.Tensor("float32", data, dims);
    }
    return f;
  };
  const loraInputs = spec.inputs.filter((t) => isLora(t.name)).length / 2;
  return { dir, m, session, feeds, loraInputs, out: spec.outputs[0]!.name };
}

const a = await open(args.a);
const b = await open(args.b);
const rows: string[] = [];
for (const batch of [1, 2]) {
  const fa = a.feeds(batch);
  const fb = b.feeds(batch);
  // Same weights, no LoRA: the outputs must agree, or the comparison is between different models.
  const ya = (await a.session.run(fa))[a.out]!.data as Float32Array;
  const yb = (await b.session.run(fb))[b.out]!.data as Float32Array;
  const diff = ya.reduce((mx, v, i) => Math.max(mx, Math.abs(v - yb[i]!)), 0);
  for (let i = 0; i < 10; i++) {
    await a.session.run(fa);
    await b.session.run(fb);
  }
  const ta: number[] = [];
  const tb: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    let t0 = performance.now();
    await a.session.run(fa);
    ta.push(performance.now() - t0);
    t0 = performance.now();
    await b.session.run(fb);
    tb.push(performance.now() - t0);
  }
  const ma = median(ta);
  const mb = median(tb);
  rows.push(
    `| ${batch} | ${ma.toFixed(3)} | ${mb.toFixed(3)} | ${(((mb - ma) / ma) * 100).toFixed(1)}% | ${diff.toExponential(1)} |`,
  );
}
const report = `# U-Net graph cost with no LoRA (\`bench/graph-cost.ts\`)

- a: \`${a.m.name}\` ${a.m.version}, ${a.loraInputs} LoRA targets (\`${args.a}\`)
- b: \`${b.m.name}\` ${b.m.version}, ${b.loraInputs} LoRA targets (\`${args.b}\`)
- ${ROUNDS} interleaved rounds per batch size, one intra-op thread, median ms of one \`unet\` call; every LoRA input at rank 0,
  residuals zero. Load average at the end ${loadavg()
    .map((l) => l.toFixed(2))
    .join(" / ")}.

| batch | a (ms) | b (ms) | b vs a | max |output a − output b| |
|---|---|---|---|---|
${rows.join("\n")}
`;
process.stdout.write(report);
if (args.out) writeFileSync(args.out, report);
