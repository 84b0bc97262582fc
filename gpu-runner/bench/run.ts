/**
 * The runner's benchmark (`npm run bench -w gpu-runner`): every configuration side by side in one run, rounds
 * interleaved so that a noisy, shared machine slows them alike; written to bench/REPORT.md.
 *
 *   latency per image and the share of text encoding / U-Net / VAE / PNG for DDIM-50 + CFG, LCM-4, RF-1 and
 *   DDIM-50 + CFG with DeepCache (intervals 2, 3, 5; and on LCM-4); threads per session; the U-Net's FLOPs per
 *   step against a large MatMul's sustained FLOP/s. Quality columns come from the zoo's evaluator (bench/quality.ts).
 *
 * Options: --bundle <dir> (one bundle for all rows, samplers forced where it lacks them), --rounds <n>,
 *          --quality-n <n> (held-out prompts scored per configuration; 0 skips the quality pass).
 */
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { availableParallelism, cpus, loadavg } from "node:os";
import { dirname, join, relative } from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { readOnnxGraph } from "@imagegen/formats/onnx-reader";
import { loadBundle, readManifest, type Bundle } from "../src/pipeline/bundle.ts";
import type { SamplerName } from "@imagegen/formats/manifest";
import { generate, type GenerationResult } from "../src/pipeline/pipeline.ts";
import type { CachePolicy, GenerationRequest } from "../src/pipeline/request.ts";
import { InferencePool } from "../src/workers/pool.ts";
import { countFlops, kernelsPerRun, runOverheadPerInput, sustainedMatmulFlops } from "./flops.ts";
import { median } from "./stats.ts";
import { formatQuality, loadEvaluator, relativeLatentChange, scoreConfiguration } from "./quality.ts";
import type { QualityScores } from "../src/eval/evaluator.ts";

const HERE = dirname(fileURLToPath(import.meta.url));
const RUNNER = join(HERE, "..");
const ZOO = join(RUNNER, "models");
const PROMPTS = [
  "a large red circle on the left, blue background",
  "a small green square on the right, white background",
  "a blue triangle in the center, yellow background",
];

const { values: args } = parseArgs({
  options: {
    bundle: { type: "string" },
    rounds: { type: "string", default: "7" },
    "quality-n": { type: "string", default: "128" },
  },
});
const ROUNDS = Number(args.rounds);
const QUALITY_N = Number(args["quality-n"]);

interface Row {
  label: string;
  sampler: SamplerName;
  steps: number;
  guidance?: number;
  cache: CachePolicy | null;
  /** The row this one's latents are compared against (same sampler, no cache). */
  baseline?: string;
}

const ROWS: Row[] = [
  { label: "DDIM-50 + CFG", sampler: "ddim", steps: 50, cache: null },
  { label: "LCM-4", sampler: "lcm", steps: 4, cache: null },
  { label: "RF-1", sampler: "rectified-flow", steps: 1, guidance: 1, cache: null },
  ...[2, 3, 5].map((interval) => ({
    label: `DDIM-50 + CFG, DeepCache ${interval}`,
    sampler: "ddim" as const,
    steps: 50,
    cache: { mode: "deepcache" as const, interval, schedule: "uniform" as const },
    baseline: "DDIM-50 + CFG",
  })),
  {
    label: "DDIM-50 + CFG, DeepCache 3 non-uniform",
    sampler: "ddim",
    steps: 50,
    cache: { mode: "deepcache", interval: 3, schedule: "non-uniform" },
    baseline: "DDIM-50 + CFG",
  },
  {
    label: "LCM-4, DeepCache 2",
    sampler: "lcm",
    steps: 4,
    cache: { mode: "deepcache", interval: 2, schedule: "uniform" },
    baseline: "LCM-4",
  },
  { label: "LCM-8", sampler: "lcm", steps: 8, cache: null },
  {
    label: "LCM-8, DeepCache 2",
    sampler: "lcm",
    steps: 8,
    cache: { mode: "deepcache", interval: 2, schedule: "uniform" },
    baseline: "LCM-8",
  },
];

interface Choice {
  dir: string;
  name: string;
  /** The bundle's weights are random (untrained): timings mean something, images do not. */
  random: boolean;
  /** The bundle does not list the sampler; it ran with `forceSampler`. */
  forced: boolean;
}

/**
 * The bundle a sampler's rows run on: a trained bundle that lists the sampler (its default first), else the trained
 * base with the sampler forced (the same architecture as the other rows, so the timing compares; the images do
 * not mean anything), else a random bundle that lists it, else the random base with the sampler forced.
 */
function chooseBundle(sampler: SamplerName): Choice {
  if (args.bundle) {
    const m = readManifest(args.bundle);
    return { dir: args.bundle, name: m.name, random: /random/.test(m.name), forced: !m.samplers.includes(sampler) };
  }
  const dirs = existsSync(ZOO)
    ? readdirSync(ZOO)
        .filter((d) => existsSync(join(ZOO, d, "manifest.json")))
        .sort()
    : [];
  const manifests = dirs.flatMap((d) => {
    try {
      const m = readManifest(join(ZOO, d));
      return [{ dir: join(ZOO, d), m, random: /random/.test(d) }];
    } catch {
      return []; // not a model bundle (an evaluator, a ControlNet) or not valid: not a candidate
    }
  });
  const listing = manifests
    .filter(({ m }) => m.samplers.includes(sampler))
    .sort(
      (a, b) =>
        Number(a.random) - Number(b.random) ||
        Number(b.m.default_sampler === sampler) - Number(a.m.default_sampler === sampler),
    );
  const pick = listing[0];
  if (pick && !pick.random) return { dir: pick.dir, name: pick.m.name, random: false, forced: false };
  const trained = manifests.find(({ random, m }) => !random && m.prediction_type === "epsilon");
  if (trained) return { dir: trained.dir, name: trained.m.name, random: false, forced: true };
  if (pick) return { dir: pick.dir, name: pick.m.name, random: true, forced: false };
  const base = manifests.find(({ random }) => random);
  if (base) return { dir: base.dir, name: base.m.name, random: true, forced: true };
  throw new Error(`bench: no bundle for ${sampler} under ${ZOO}; pass --bundle <dir>`);
}

/** The most a uniform DeepCache schedule can save on U-Net work when a cached step costs `cachedShare` of a full one. */
function deepCacheBound(steps: number, interval: number, cachedShare: number): number {
  const full = Math.ceil(steps / interval);
  return steps / (full + (steps - full) * cachedShare);
}

const fmt = (x: number, digits = 1) => x.toFixed(digits);
const pct = (part: number, whole: number) => `${((100 * part) / whole).toFixed(0)}%`;

async function main(): Promise<void> {
  const started = new Date();
  const bundles = new Map<string, Bundle>();
  const choices = new Map<string, Choice>();
  for (const row of ROWS) {
    const choice = chooseBundle(row.sampler);
    choices.set(row.label, choice);
    if (!bundles.has(choice.dir))
      bundles.set(choice.dir, await loadBundle(choice.dir, { executionProviders: ["cpu"], intraOpNumThreads: 1 }));
  }
  const request = (row: Row, round: number): GenerationRequest => {
    const choice = choices.get(row.label)!;
    const m = bundles.get(choice.dir)!.manifest;
    return {
      prompt: PROMPTS[round % PROMPTS.length]!,
      seed: 1000 + round,
      sampler: row.sampler,
      steps: row.steps,
      // DDIM's baseline is guided: the model's default scale, or SD's 7.5 when the default is 1 (no guidance).
      guidance:
        row.guidance ?? (row.sampler === "ddim" && m.guidance.default_scale <= 1 ? 7.5 : m.guidance.default_scale),
      cache: row.cache,
      forceSampler: choice.forced,
    };
  };
  const run = (row: Row, round: number) => generate(bundles.get(choices.get(row.label)!.dir)!, request(row, round));

  process.stderr.write(`bench: warming up ${ROWS.length} configurations\n`);
  for (const row of ROWS) await run(row, 0);
  const results = new Map<string, GenerationResult[]>(ROWS.map((r) => [r.label, []]));
  for (let round = 0; round < ROUNDS; round++) {
    // Rotate the order each round so that no configuration always runs first or last.
    const order = ROWS.map((_, i) => ROWS[(i + round) % ROWS.length]!);
    for (const row of order) results.get(row.label)!.push(await run(row, round));
    process.stderr.write(`bench: round ${round + 1}/${ROUNDS}\n`);
  }

  // Quality: held-out prompts per configuration, scored by the evaluator (trained bundles with their own samplers only).
  const evaluator = await loadEvaluator(ZOO);
  const quality = new Map<string, QualityScores | string>();
  for (const row of ROWS) {
    const choice = choices.get(row.label)!;
    if (!evaluator) quality.set(row.label, "— (no evaluator)");
    else if (choice.random) quality.set(row.label, "— (random weights)");
    else if (choice.forced) quality.set(row.label, "— (sampler forced)");
    else if (QUALITY_N < 2) quality.set(row.label, "— (skipped)");
    else {
      process.stderr.write(`bench: quality of ${row.label} on ${QUALITY_N} held-out prompts\n`);
      const { prompt: _p, seed: _s, ...settings } = request(row, 0);
      quality.set(row.label, await scoreConfiguration(evaluator, bundles.get(choice.dir)!, settings, QUALITY_N));
    }
  }
  const qualityCell = (label: string) => {
    const q = quality.get(label)!;
    return typeof q === "string" ? q : formatQuality(q);
  };
  const qualityOf = (label: string) => {
    const q = quality.get(label);
    return q && typeof q !== "string" ? q : null;
  };
  /**
   * The fastest round of a row: the one least disturbed by other work on this shared machine. Ratios and shares
   * come from it (medians are shown beside it); bursts of outside load move medians by tens of percent.
   */
  const best = (label: string) => results.get(label)!.reduce((a, b) => (b.timings.totalMs < a.timings.totalMs ? b : a));
  const stat = (label: string, key: keyof GenerationResult["timings"]) => best(label).timings[key];
  const speedup = (slow: string, fast: string) => stat(slow, "totalMs") / stat(fast, "totalMs");
  const lcm = stat("LCM-4", "totalMs");
  const rf = stat("RF-1", "totalMs");
  const latencyRows = ROWS.map((row) => {
    const rs = results.get(row.label)!;
    const b = best(row.label);
    const t = b.timings;
    let change = "";
    if (row.baseline) {
      const bs = results.get(row.baseline)!;
      change = fmt(median(rs.map((r, i) => relativeLatentChange(r.latents, bs[i]!.latents))), 3);
    }
    const choice = choices.get(row.label)!;
    return {
      row,
      change,
      line:
        `| ${row.label} | ${choice.name}${choice.forced ? " (forced)" : ""} | ${b.classifierFreeGuidance ? "yes" : "no"} | ` +
        `${fmt(t.totalMs)} (${fmt(median(rs.map((r) => r.timings.totalMs)))}) | ${fmt(speedup("DDIM-50 + CFG", row.label), 2)}× | ` +
        `${fmt(t.unetMs / b.steps, 2)} | ${pct(t.textEncoderMs, t.totalMs)} | ${pct(t.unetMs, t.totalMs)} | ` +
        `${pct(t.vaeMs, t.totalMs)} | ${pct(t.pngMs, t.totalMs)} | ${change || "—"} | ${qualityCell(row.label)} |`,
    };
  });

  const changeOf = (label: string) => latencyRows.find((r) => r.row.label === label)!.change;

  // Threads per session: one image's latency, and throughput of a pool of workers.
  process.stderr.write("bench: threads per session\n");
  const ddimRow = ROWS[0]!;
  const ddimDir = choices.get(ddimRow.label)!.dir;
  const twoThreads = await loadBundle(ddimDir, { executionProviders: ["cpu"], intraOpNumThreads: 2 });
  const latency1: number[] = [];
  const latency2: number[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    latency1.push((await generate(bundles.get(ddimDir)!, request(ddimRow, round))).timings.totalMs);
    latency2.push((await generate(twoThreads, request(ddimRow, round))).timings.totalMs);
  }
  await twoThreads.release();
  const jobs = 8;
  const throughput = async (size: number, threads: number, allowSpinning = false) => {
    const pool = new InferencePool({
      size,
      session: { executionProviders: ["cpu"], intraOpNumThreads: threads, allowSpinning },
    });
    try {
      await Promise.all(Array.from({ length: size }, (_, i) => pool.generate(ddimDir, request(ddimRow, i)))); // load sessions
      const t0 = performance.now();
      await Promise.all(Array.from({ length: jobs }, (_, i) => pool.generate(ddimDir, request(ddimRow, i))));
      return (jobs / (performance.now() - t0)) * 1000;
    } finally {
      await pool.close();
    }
  };
  const poolSettings = [
    { label: "1 worker × 1 thread", size: 1, threads: 1, spin: false },
    { label: "1 worker × 2 threads", size: 1, threads: 2, spin: false },
    { label: "1 worker × 2 threads, spinning", size: 1, threads: 2, spin: true },
    { label: "2 workers × 1 thread (default: one per core)", size: 2, threads: 1, spin: false },
    { label: "2 workers × 2 threads", size: 2, threads: 2, spin: false },
  ];
  // Settings interleaved over five rounds, best per setting: a pool takes seconds, and the load moves meanwhile.
  const poolRuns: number[][] = poolSettings.map(() => []);
  for (let round = 0; round < 5; round++) {
    for (const [i, s] of poolSettings.entries()) poolRuns[i]!.push(await throughput(s.size, s.threads, s.spin));
  }
  const poolResults = poolRuns.map((runs) => Math.max(...runs));

  // The physical floor.
  process.stderr.write("bench: FLOPs and sustained MatMul\n");
  const ddimBundle = bundles.get(ddimDir)!;
  const unetSpec = ddimBundle.manifest.components.unet;
  const unetFlops = await countFlops(join(ddimDir, unetSpec.path), unetSpec);
  const split: Record<string, number> = {};
  for (const part of ["unet_head", "unet_deep", "unet_tail"] as const) {
    const spec = ddimBundle.manifest.components[part];
    if (spec) split[part] = (await countFlops(join(ddimDir, spec.path), spec)).flops;
  }
  const kernels = await kernelsPerRun(join(ddimDir, unetSpec.path), unetSpec);
  const graphNodes = readOnnxGraph(readFileSync(join(ddimDir, unetSpec.path))).nodes.length;
  const binding = await runOverheadPerInput();
  const matmul1 = await sustainedMatmulFlops(1024, 1);
  const matmul2 = await sustainedMatmulFlops(1024, 2);
  const lcmRuns = results.get("LCM-4")!;
  const measuredStep = Math.min(...lcmRuns.map((r) => r.timings.unetMs / r.steps)); // batch 1, no CFG
  const floorMs = (unetFlops.flops / matmul1) * 1000;
  const cachedShare =
    split.unet_deep !== undefined
      ? (split.unet_head! + split.unet_tail!) / (split.unet_head! + split.unet_deep! + split.unet_tail!)
      : NaN;

  // Per-run time of each split part in DeepCache 3's fastest round (the sessions time their own runs).
  const dc3Best = best("DDIM-50 + CFG, DeepCache 3");
  const avgMs = (c: "unet_head" | "unet_deep" | "unet_tail") =>
    (dc3Best.componentMs[c] ?? NaN) / Math.max(1, dc3Best.componentRuns[c] ?? 0);
  const cachedStepMs = avgMs("unet_head") + avgMs("unet_tail");
  const fullSplitStepMs = cachedStepMs + avgMs("unet_deep");
  const wholeStepMs = stat("DDIM-50 + CFG", "unetMs") / 50;
  const anyForced = [...choices.values()].some((c) => c.forced);
  const anyRandom = [...choices.values()].some((c) => c.random);
  const target = (ok: boolean) => (ok ? "met" : "**missed**");
  const deepCacheQualityLine = () => {
    const [plain, cached] = [qualityOf("DDIM-50 + CFG"), qualityOf("DDIM-50 + CFG, DeepCache 3")];
    if (!plain || !cached)
      return `| … within 0.03 of its quality | not measured (${qualityCell("DDIM-50 + CFG, DeepCache 3")}) | — | latent change ${changeOf("DDIM-50 + CFG, DeepCache 3")} meanwhile`;
    const drop = plain.mean - cached.mean;
    return `| … within 0.03 of its quality | ${cached.mean.toFixed(3)} vs ${plain.mean.toFixed(3)} uncached (${drop >= 0 ? "−" : "+"}${Math.abs(drop).toFixed(3)}) | ${target(drop <= 0.03)} | FD ${cached.fd.toFixed(0)} vs ${plain.fd.toFixed(0)}; latent change ${changeOf("DDIM-50 + CFG, DeepCache 3")}`;
  };
  const report = `# gpu-runner bench

Run ${started.toISOString()} by \`npm run bench -w gpu-runner\` (${ROUNDS} interleaved rounds after one warm-up, one
image per request, in-process on one thread per session; the serving path runs the same
pipeline inside a worker). Machine: ${cpus()[0]?.model ?? "unknown CPU"}, ${availableParallelism()} cores, load average
${loadavg()
  .map((l) => l.toFixed(2))
  .join(" / ")} at the end (shared with other work: read ratios, not absolute times).

${
  anyRandom || anyForced
    ? `**Not every row ran a trained model with its own sampler.** Rows on bundles named \`*-random*\` ran untrained,
randomly initialised bundles with the real interface (the zoo has not committed that trained bundle yet): their
images are noise and only their timings mean something.${
        anyForced ? ' Rows marked "(forced)" ran a sampler the bundle was not trained for (timing only).' : ""
      } The bench picks trained bundles up by their manifests when they land.`
    : "All rows ran on trained bundles whose manifests list the sampler."
}

## Latency per image

| configuration | bundle | CFG | ms / image, best (median) | speed-up vs DDIM-50 + CFG | U-Net ms / step | text | U-Net | VAE | PNG | latent change vs uncached | quality: attribute accuracy · FD (evaluator, ${QUALITY_N} held-out prompts) |
|---|---|---|---|---|---|---|---|---|---|---|---|
${latencyRows.map((r) => r.line).join("\n")}

Times, speed-ups and shares are from each row's fastest round (medians in brackets): bursts of other work on the
machine move medians by tens of percent, the fastest round is the cost of the work itself. Shares are of the total
time per image; the remainder is the pipeline's own work (noise, guidance arithmetic,
sampler updates). "Latent change" is ‖x_cached − x_uncached‖ / ‖x_uncached‖ of the final latents for the same seed:
a fidelity proxy that needs no evaluator (0 = caching changed nothing).
Quality: the first ${QUALITY_N} held-out prompts of the zoo's evaluator set (seeds 5000 + index), one image each, scored by
the evaluator (mean attribute accuracy over shape, colour, size, position, background; Fréchet distance of its
features to 2000 held-out real images; it grows as fewer images are scored, so compare rows with each other, not with
the zoo's 256-prompt numbers in \`zoo/REPORT.md\`, which use other noise and agree within sampling error).

## Targets (issue 4)

| target | measured | | why |
|---|---|---|---|
| LCM-4 ≥ 10× faster than DDIM-50 + CFG | ${fmt(speedup("DDIM-50 + CFG", "LCM-4"), 1)}× | ${target(speedup("DDIM-50 + CFG", "LCM-4") >= 10)} | U-Net alone: ${fmt(stat("DDIM-50 + CFG", "unetMs") / stat("LCM-4", "unetMs"), 1)}×; text, VAE, PNG and the pipeline's own work cost ${fmt(lcm - stat("LCM-4", "unetMs"), 1)} ms of LCM-4's ${fmt(lcm, 1)} ms |
| RF-1 ≥ 2.5× faster than LCM-4 | ${fmt(speedup("LCM-4", "RF-1"), 2)}× | ${target(speedup("LCM-4", "RF-1") >= 2.5)} | U-Net alone: ${fmt(stat("LCM-4", "unetMs") / stat("RF-1", "unetMs"), 2)}×; the fixed ${fmt(rf - stat("RF-1", "unetMs"), 1)} ms (text, VAE, PNG, pipeline) is ${pct(rf - stat("RF-1", "unetMs"), rf)} of RF-1, so even a free U-Net step would give ${fmt(lcm / (rf - stat("RF-1", "unetMs")), 2)}× at most |
| DeepCache 3 ≥ 1.8× on DDIM-50 + CFG | ${fmt(speedup("DDIM-50 + CFG", "DDIM-50 + CFG, DeepCache 3"), 2)}× | ${target(speedup("DDIM-50 + CFG", "DDIM-50 + CFG, DeepCache 3") >= 1.8)} | a cached step (head + tail, ${fmt(cachedStepMs, 2)} ms) takes ${pct(cachedStepMs, wholeStepMs)} of a whole-U-Net step (${fmt(wholeStepMs, 2)} ms; ${pct(cachedShare, 1)} of its FLOPs), a full split step ${pct(fullSplitStepMs, wholeStepMs)}; 17 full + 33 cached steps bound the U-Net's speed-up at ${fmt(50 / (17 * (fullSplitStepMs / wholeStepMs) + 33 * (cachedStepMs / wholeStepMs)), 2)}× (by FLOPs: ${fmt(deepCacheBound(50, 3, cachedShare), 2)}×) |
${deepCacheQualityLine()} |

DeepCache on LCM (interval 2): ${fmt(speedup("LCM-4", "LCM-4, DeepCache 2"), 2)}× on LCM-4 (latent change ${changeOf("LCM-4, DeepCache 2")}),
${fmt(speedup("LCM-8", "LCM-8, DeepCache 2"), 2)}× on LCM-8 (latent change ${changeOf("LCM-8, DeepCache 2")}), against
${fmt(speedup("DDIM-50 + CFG", "DDIM-50 + CFG, DeepCache 2"), 2)}× on DDIM-50 (latent change ${changeOf("DDIM-50 + CFG, DeepCache 2")}). With few steps a
cached step reuses a deep feature from a much noisier timestep (LCM-4 jumps 240–260 timesteps per step, DDIM-50
jumps 20) and the fixed costs (text, VAE, PNG) weigh more. Measured here, caching on LCM-4 ${
    speedup("LCM-4", "LCM-4, DeepCache 2") < speedup("DDIM-50 + CFG", "DDIM-50 + CFG, DeepCache 2")
      ? "saves less"
      : "saves as much or more"
  } and ${
    Number(changeOf("LCM-4, DeepCache 2")) > Number(changeOf("DDIM-50 + CFG, DeepCache 2"))
      ? "moves the latents more"
      : "moves the latents no more"
  } than on DDIM-50${qualityOf("LCM-4") && qualityOf("LCM-4, DeepCache 2") ? ` (quality ${formatQuality(qualityOf("LCM-4")!)} uncached, ${formatQuality(qualityOf("LCM-4, DeepCache 2")!)} cached)` : " (whether the change is visible needs the evaluator on a trained LCM bundle)"}.

## Threads per session

| setting | result |
|---|---|
| one DDIM-50 + CFG image, 1 intra-op thread (best of ${ROUNDS}) | ${fmt(Math.min(...latency1))} ms |
| one DDIM-50 + CFG image, 2 intra-op threads (best of ${ROUNDS}) | ${fmt(Math.min(...latency2))} ms |
${poolSettings.map((s, i) => `| pool of ${s.label}: ${jobs} DDIM-50 + CFG jobs (best of 5) | ${fmt(poolResults[i]!, 2)} images/s |`).join("\n")}

Best throughput here: ${poolSettings[poolResults.indexOf(Math.max(...poolResults))]!.label}. Two intra-op threads per session
${Math.min(...latency2) > Math.min(...latency1) ? "slow a single image down" : "speed a single image up"} (${fmt(Math.min(...latency1))} → ${fmt(Math.min(...latency2))} ms): the U-Net's
kernels are too small to split across threads, and on a shared CPU the second thread waits for a core. The runner
keeps one thread per session with spinning off, and one worker per core so that jobs, not operators, fill the cores${
    poolResults[3]! >= poolResults[0]!
      ? "; two workers measured at least as fast as one here."
      : `. Here one worker (${fmt(poolResults[0]!, 2)} images/s) beat two (${fmt(poolResults[3]!, 2)}): the second core was busy with other work
(load average ${loadavg()[0]!.toFixed(1)} on ${availableParallelism()} cores), so a second worker only queued for it. On an idle machine two workers run
the same U-Net at single-worker speed each (REFERENCE.md); size the pool to the cores the runner really has.`
  }

## Physical floor

| quantity | value |
|---|---|
| U-Net FLOPs per step per image (Conv/MatMul/Gemm from the graph, \`${ddimBundle.manifest.name}\`) | ${fmt(unetFlops.flops / 1e6, 1)} MFLOP (${Object.entries(
    unetFlops.byOp,
  )
    .map(([op, f]) => `${op} ${fmt(f / 1e6, 1)}`)
    .join(", ")}) |
| split for DeepCache: head / deep / tail | ${split.unet_deep !== undefined ? `${fmt(split.unet_head! / 1e6, 1)} / ${fmt(split.unet_deep / 1e6, 1)} / ${fmt(split.unet_tail! / 1e6, 1)} MFLOP; a cached step does ${pct(cachedShare, 1)} of a full step's work` : "not split"} |
| DeepCache's FLOP bound on U-Net time, DDIM-50, intervals 2 / 3 / 5 | ${[2, 3, 5].map((k) => `${fmt(deepCacheBound(50, k, cachedShare), 2)}×`).join(" / ")} |
| sustained MatMul 1024×1024×1024, 1 thread | ${fmt(matmul1 / 1e9, 1)} GFLOP/s |
| sustained MatMul 1024×1024×1024, 2 threads | ${fmt(matmul2 / 1e9, 1)} GFLOP/s |
| floor per U-Net step (FLOPs / 1-thread MatMul rate) | ${fmt(floorMs, 3)} ms |
| measured U-Net step, batch 1 (LCM-4 rows) | ${fmt(measuredStep, 3)} ms (${fmt(measuredStep / floorMs, 1)}× the floor) |
| U-Net graph nodes / kernels launched per run after ONNX Runtime's optimisations | ${graphNodes} / ${fmt(kernels, 0)} |
| measured step per kernel | ${fmt((measuredStep * 1000) / kernels, 2)} µs |
| \`session.run\` cost: fixed, and per graph input (binding) | ${fmt(binding.baseUs, 1)} µs + ${fmt(binding.perInputUs, 2)} µs × inputs; the U-Net has ${unetSpec.inputs.length} inputs (${fmt((binding.perInputUs * unetSpec.inputs.length) / 1000, 3)} ms per step) |

How close the step comes to the floor: ${
    measuredStep / floorMs > 3
      ? `not close. At ${fmt(unetFlops.flops / 1e6, 1)} MFLOP a step is too small for arithmetic to matter; its time is
${fmt(kernels, 0)} kernel launches at about ${fmt((measuredStep * 1000) / kernels, 1)} µs each (shape arithmetic, reshapes, transposes and
the rank-0 LoRA branches of the export count as much as the convolutions). Fewer, larger kernels (constant-folding the
shape subgraphs at export, a static rank, fusing the branches) would move it towards the floor; bigger latents or
batches amortise the launches (the CFG rows run batch 2 at about the cost of batch 1).`
      : "within a small factor: the step is dominated by arithmetic."
  }
`;
  const out = join(HERE, "REPORT.md");
  writeFileSync(out, report);
  process.stdout.write(report);
  process.stderr.write(`bench: wrote ${relative(process.cwd(), out)}\n`);
  await Promise.all([...bundles.values()].map((b) => b.release()));
}

await main();
