/**
 * Add-on serving benchmark (`npm run bench:addons -w gpu-runner`), every configuration side by side in one run with
 * rounds interleaved, written to bench/ADDONS.md:
 *
 *   LCM-4 with no LoRA, one, and three stacked (warm); a ControlNet (one, two) against none; a cold add-on
 *   behind a simulated storage delay (50 and 200 ms), loaded first versus overlapped with sampling (bounded
 *   asynchronous loading). Runs through the same worker pool, add-on cache and pipeline that serve requests.
 *
 * Options: --bundle <dir> (default: the trained LCM bundle when it exists, else the random LCM test bundle),
 * --rounds <n>, --join-fraction <f> (default: the runner's).
 */
import { spawnSync } from "node:child_process";
import { readdirSync, readFileSync, writeFileSync, existsSync } from "node:fs";
import { createHash } from "node:crypto";
import { loadavg } from "node:os";
import { dirname, join, relative } from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { conditioningTensor, decodePng } from "../src/addons/control-image.ts";
import { DEFAULT_ADDON_JOIN_FRACTION, joinStepOf } from "../src/addons/late-join.ts";
import type { RequestAddons } from "../src/addons/request-addons.ts";
import { AddonStore } from "../src/addons/store.ts";
import { readManifest } from "../src/pipeline/bundle.ts";
import { encodePng } from "../src/pipeline/png.ts";
import { InferencePool } from "../src/workers/pool.ts";
import { median } from "./stats.ts";

const HERE = dirname(fileURLToPath(import.meta.url));
const ZOO = join(HERE, "..", "models");
const { values: args } = parseArgs({
  options: {
    bundle: { type: "string" },
    rounds: { type: "string", default: "7" },
    "join-fraction": { type: "string", default: String(DEFAULT_ADDON_JOIN_FRACTION) },
  },
});
const trained = join(ZOO, "tiny-shapes-lcm");
const bundle =
  args.bundle ?? (existsSync(join(trained, "manifest.json")) ? trained : join(ZOO, "tiny-shapes-random-lcm"));
const manifest = readManifest(bundle);
const random = manifest.name.includes("random");
const ROUNDS = Number(args.rounds);
const JOIN = Number(args["join-fraction"]);
const JOIN_STEP = joinStepOf(JOIN, 4); // the LCM-4 rows

/** The family's add-ons: LoRA files and ControlNet bundles found beside any bundle of the family. */
function familyAddons() {
  const loras: Uint8Array[] = [];
  const controlnets: string[] = [];
  for (const b of readdirSync(ZOO)) {
    const dir = join(ZOO, b, "addons");
    if (!existsSync(dir) || readManifest(join(ZOO, b)).family !== manifest.family) continue;
    for (const f of readdirSync(dir)) {
      if (f.endsWith(".safetensors")) loras.push(new Uint8Array(readFileSync(join(dir, f))));
      else if (existsSync(join(dir, f, "manifest.json"))) controlnets.push(join(dir, f));
    }
  }
  return { loras, controlnets };
}
const found = familyAddons();
if (found.loras.length === 0) throw new Error(`no LoRA files for family ${manifest.family}`);
const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
const loraOf = (i: number, scale = 0.8) => ({
  sha256: sha(found.loras[i % found.loras.length]!),
  bytes: found.loras[i % found.loras.length]!,
  scale,
});

function maskConditioning(dir: string): Float32Array {
  const rgb = new Uint8Array(64 * 64 * 3);
  for (let y = 16; y < 48; y++) for (let x = 8; x < 32; x++) rgb.fill(255, (y * 64 + x) * 3, (y * 64 + x) * 3 + 3);
  const cond = JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8")).conditioning;
  return conditioningTensor(decodePng(encodePng(rgb, 64, 64)), cond);
}

const request = {
  prompt: "a large red circle on the left, blue background",
  seed: 3,
  sampler: "lcm" as const,
  steps: 4,
};
/**
 * The merge-mode twin of the bundle (same weights, no LoRA branch inputs), built from the zoo's checkpoints by
 * `python -m zoo.export merge` into the git-ignored zoo/.work/bundles: 8 MB of float32 that a script regenerates in seconds.
 */
function mergeBundle(): string | undefined {
  const dir = join(HERE, "..", "zoo", ".work", "bundles", `${manifest.name}-merge`);
  if (random) return undefined;
  if (!existsSync(join(dir, "manifest.json"))) {
    process.stderr.write(`building ${dir} (python -m zoo.export merge) ...\n`);
    const r = spawnSync("/usr/bin/python3", ["-m", "zoo.export", "merge"], {
      cwd: join(HERE, ".."),
      stdio: ["ignore", "ignore", "inherit"],
    });
    if (r.status !== 0)
      process.stderr.write(
        "could not build the merge-mode bundle (needs /usr/bin/python3 with torch): merge rows skipped\n",
      );
  }
  return existsSync(join(dir, "manifest.json")) ? dir : undefined;
}
const merged = mergeBundle();

// Stacked rows stay stacked (merging off); the hot rows' pool merges a set on its 3rd batch, as the runner does.
const pool = new InferencePool({ size: 1, parallelControlNet: true, mergeHotAfter: 0 });
const sequentialPool = new InferencePool({ size: 1, parallelControlNet: false, mergeHotAfter: 0 });
const hotPool = new InferencePool({ size: 1, parallelControlNet: true });

interface Config {
  label: string;
  /** Another bundle than the benchmarked one (the merge-mode twin). */
  bundle?: string;
  /** ControlNets in sequence on the inference worker instead of in their own worker. */
  sequential?: boolean;
  /** On the pool that merges hot LoRA sets (with LoRAs: warmed up until the set runs merged). */
  hot?: boolean;
  /** Returns the add-ons for one generation, possibly still loading, and whether to overlap them. */
  addons: () => { addons: RequestAddons[] | Promise<RequestAddons[]>; joinFraction?: number };
}

/** A store whose every fetch waits `delayMs`, emptied before each use: a cold add-on behind slow storage. */
function coldFetch(delayMs: number): () => Promise<RequestAddons[]> {
  return async () => {
    const bytes = found.loras[0]!;
    const store = new AddonStore({
      memoryBudgetBytes: 0,
      fetchBytes: async () => {
        await new Promise((r) => setTimeout(r, delayMs));
        return bytes;
      },
    });
    const f = await store.get({ ref: "bench@1", url: "mem://bench", sha256: sha(bytes) });
    return [{ loras: [{ sha256: f.sha256, bytes: f.bytes, scale: 0.8 }], controlnets: [] }];
  };
}

const none: RequestAddons = { loras: [], controlnets: [] };
let coldMerges = 0;
const configs: Config[] = [
  { label: "LCM-4, no add-on", addons: () => ({ addons: [none] }) },
  { label: "LCM-4, 1 LoRA (warm)", addons: () => ({ addons: [{ loras: [loraOf(0)], controlnets: [] }] }) },
  {
    label: "LCM-4, 3 LoRAs stacked (warm)",
    addons: () => ({ addons: [{ loras: [loraOf(0), loraOf(1), loraOf(2)], controlnets: [] }] }),
  },
  ...(found.controlnets.length
    ? [
        ...[false, true].flatMap((sequential) => [
          {
            label: `LCM-4, 1 ControlNet, ${sequential ? "in sequence" : "in parallel"}`,
            sequential,
            addons: () => ({
              addons: [
                {
                  loras: [],
                  controlnets: [
                    { dir: found.controlnets[0]!, conditioning: maskConditioning(found.controlnets[0]!), scale: 1 },
                  ],
                },
              ],
            }),
          },
          {
            label: `LCM-4, 2 ControlNets, ${sequential ? "in sequence" : "in parallel"}`,
            sequential,
            addons: () => ({
              addons: [
                {
                  loras: [],
                  controlnets: [0, 1].map(() => ({
                    dir: found.controlnets[0]!,
                    conditioning: maskConditioning(found.controlnets[0]!),
                    scale: 0.5,
                  })),
                },
              ],
            }),
          },
        ]),
      ]
    : []),
  // The same worker's baseline: the hot rows run on a worker of their own.
  { label: "LCM-4, no add-on, on the hot-set worker", hot: true, addons: () => ({ addons: [none] }) },
  {
    label: "LCM-4, 1 LoRA, hot set (merged into the branch model)",
    hot: true,
    addons: () => ({ addons: [{ loras: [loraOf(0)], controlnets: [] }] }),
  },
  {
    label: "LCM-4, 3 LoRAs, hot set (merged into the branch model)",
    hot: true,
    addons: () => ({ addons: [{ loras: [loraOf(0), loraOf(1), loraOf(2)], controlnets: [] }] }),
  },
  ...(merged
    ? [
        {
          label: "LCM-4, 1 LoRA merged (warm: merged session cached)",
          bundle: merged,
          addons: () => ({ addons: [{ loras: [loraOf(0)], controlnets: [] }] }),
        },
        {
          label: "LCM-4, 3 LoRAs merged (warm: merged session cached)",
          bundle: merged,
          addons: () => ({ addons: [{ loras: [loraOf(0), loraOf(1), loraOf(2)], controlnets: [] }] }),
        },
        // A new add-on set every time (the scale differs): merge into the weights and build a session, per request.
        {
          label: "LCM-4, 1 LoRA merged (cold: merge + session rebuild)",
          bundle: merged,
          addons: () => ({ addons: [{ loras: [loraOf(0, 0.8 + ++coldMerges * 1e-4)], controlnets: [] }] }),
        },
      ]
    : []),
  ...[50, 200].flatMap((delay) => [
    { label: `LCM-4, cold LoRA, ${delay} ms storage, loaded first`, addons: () => ({ addons: coldFetch(delay)() }) },
    {
      label: `LCM-4, cold LoRA, ${delay} ms storage, overlapped (join by step ${JOIN_STEP})`,
      addons: () => ({ addons: coldFetch(delay)(), joinFraction: JOIN }),
    },
  ]),
];

const samples = new Map<string, number[]>(configs.map((c) => [c.label, []]));
// Warm-up: sessions, parsed LoRAs, ControlNet sessions.
/** A hot row whose add-ons bring LoRAs: its set becomes merged on the hot-set pool. */
function mergesLoras(c: Config): boolean {
  if (!c.hot) return false; // before c.addons(): a cold row's addons() starts a fetch
  const { addons } = c.addons();
  return !(addons instanceof Promise) && addons.some((a) => a.loras.length > 0);
}
const poolFor = (c: Config) => (c.hot ? hotPool : c.sequential ? sequentialPool : pool);
let hotMerged = 0;
let hotRuns = 0;
let hotWarmup = 0;
for (const c of configs) {
  const mergeable = mergesLoras(c);
  for (let i = 0, merged = false; i < (mergeable ? 20 : 1) && !(mergeable && merged); i++) {
    const { addons, joinFraction } = c.addons();
    await poolFor(c).generate(c.bundle ?? bundle, request, {
      addons,
      ...(joinFraction !== undefined ? { addonJoinFraction: joinFraction } : {}),
      onAddonsJoined: (_, m) => (merged = m),
    });
    if (mergeable) hotWarmup++;
  }
}
for (let round = 0; round < ROUNDS; round++) {
  // Each round starts at another configuration: the one after the slow cold-fetch rows (an idle worker) rotates.
  for (let k = 0; k < configs.length; k++) {
    const c = configs[(k + round) % configs.length]!;
    const start = performance.now();
    const { addons, joinFraction } = c.addons();
    await poolFor(c).generate(
      c.bundle ?? bundle,
      { ...request, seed: request.seed + round },
      {
        addons,
        ...(joinFraction !== undefined ? { addonJoinFraction: joinFraction } : {}),
        onAddonsJoined: (_, m) => mergesLoras(c) && (hotRuns++, (hotMerged += m ? 1 : 0)),
      },
    );
    samples.get(c.label)!.push(performance.now() - start);
  }
}
// Stacked (branch inputs) against merged (weights): the same LoRAs, seed and prompt give the same image.
let agreement = "";
if (merged) {
  const three = { loras: [loraOf(0), loraOf(1), loraOf(2)], controlnets: [] };
  const [a, b] = [
    await pool.generate(bundle, request, { addons: [three] }),
    await pool.generate(merged, request, { addons: [three] }),
  ];
  let maxDiff = 0,
    norm = 0;
  a.latents.forEach(
    (v, i) => ((maxDiff = Math.max(maxDiff, Math.abs(v - b.latents[i]!))), (norm = Math.max(norm, Math.abs(v)))),
  );
  agreement = `Stacked against merged, 3 LoRAs, same seed: final latents differ by at most ${maxDiff.toExponential(2)} (latents up to ${norm.toFixed(2)} in magnitude).`;
}
await Promise.all([pool.close(), sequentialPool.close(), hotPool.close()]);

const base = median(samples.get(configs[0]!.label)!);
const rows = configs.map((c) => {
  const m = median(samples.get(c.label)!);
  return `| ${c.label} | ${m.toFixed(1)} | ${Math.min(...samples.get(c.label)!).toFixed(1)} | ${(((m - base) / base) * 100).toFixed(1)}% |`;
});
const cold = (delay: number, overlapped: boolean) =>
  median(
    samples.get(
      `LCM-4, cold LoRA, ${delay} ms storage, ${overlapped ? `overlapped (join by step ${JOIN_STEP})` : "loaded first"}`,
    )!,
  );
const hidden = (delay: number) => ((cold(delay, false) - cold(delay, true)) / delay) * 100;
const report = `# Add-on serving benchmark

Bundle: \`${relative(join(HERE, ".."), bundle)}\`${random ? " — **randomly initialised test bundle** (timings only: the trained family was not exported yet)" : ""}.
Command: \`npm run bench:addons -w gpu-runner -- --rounds ${ROUNDS}\`; one inference worker (1 thread); ${ROUNDS} interleaved rounds after a warm-up, each starting at the next configuration;
load average at the end ${loadavg()
  .map((l) => l.toFixed(2))
  .join(" / ")} (other work on the machine raises it).
Latency is request to PNG through the worker pool (text encoding, 4 LCM steps, VAE, PNG, add-on application).

| configuration | median ms | best ms | vs no add-on |
| --- | ---: | ---: | ---: |
${rows.join("\n")}

Cold add-on: overlapping hides ${hidden(50).toFixed(0)}% of a 50 ms fetch and ${hidden(200).toFixed(0)}% of a 200 ms fetch
(the first ${JOIN_STEP} steps run while it loads; then the generation waits for it).

Targets (issue 5): stacked LoRAs add ≤ 5% to a warm LCM-4 generation; a ControlNet in parallel adds ≤ 30%; overlap hides
most of a cold fetch. "In parallel": the ControlNet runs in a worker of its own while the inference worker runs the
U-Net's head (the U-Net then runs as its split parts); "in sequence": both on the inference worker.
Stacked rows run with hot-set merging off (\`mergeHotAfter: 0\`). Hot rows run as the runner does by default
(\`--lora-merge-after 3\`): the set ran stacked until it was merged in the background into the branch model's own
weights (${hotWarmup} warm-up generations for the two hot sets), and ${hotMerged} of the ${hotRuns} timed hot runs ran merged. ${
  merged
    ? `Merged rows run the merge-mode twin \`${relative(join(HERE, ".."), merged)}\` (no LoRA branch inputs; built by \`python -m zoo.export merge\`):
"warm" reuses the session built for that add-on set, "cold" merges the LoRA into the weights and builds a session per request.
${agreement}`
    : "Merge-and-rebuild rows are missing: no merge-mode twin of this bundle (random bundle, or `python -m zoo.export merge` could not run)."
}
`;
writeFileSync(join(HERE, "ADDONS.md"), report);
process.stdout.write(report);
