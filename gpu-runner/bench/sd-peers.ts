/**
 * The runner against its peers on the same work (`npm run bench:sd-peers -w gpu-runner -- [--model sd15|full]`):
 * latency per image of the runner's pipeline (an imported export, onnxruntime-node), optimum's ONNX Runtime pipeline
 * over the same export (Python) and diffusers over the PyTorch pipeline the export was made from, with the same
 * scheduler (`--sampler euler`, EulerDiscreteScheduler, or `ddim`), steps, guidance, size, prompt and initial latents. One Python process (sd-fixtures/sd_peers.py)
 * holds both Python pipelines loaded and times one image per request, so the three run interleaved in one loop,
 * the order rotating each round (A B C, B C A, C A B, ...) so no peer always follows the same neighbour.
 *
 *   --model sd15     the committed sd15 fixture (64×64) and sd-fixtures/out/pt/sd15 (make_fixtures.py)
 *   --model full     sd-fixtures/out/full/sd15-fp16[-via-fp32] (full_size.py) and the fp32 PyTorch pipeline it was
 *                    exported from, sd15-pt32 (full_size.py deletes it: rebuild it, same seed, with
 *                    `.venv/bin/python -c "import full_size; full_size.build('sd15', fp16=False)"`)
 *   --export, --pytorch   any other pair; --rounds, --steps, --guidance, --threads, --json <file>
 */
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { performance } from "node:perf_hooks";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import { loadBundle } from "../src/pipeline/bundle.ts";
import { prepareLatents } from "../src/pipeline/latents.ts";
import { generate } from "../src/pipeline/pipeline.ts";
import type { GenerationRequest } from "../src/pipeline/request.ts";
import { SCHEDULER_CLASSES } from "../src/samplers/index.ts";
import {
  FIXTURES,
  FULL_DIR,
  fullExport,
  GPU_RUNNER,
  importInChild,
  machineLoad,
  maxRssMb,
  rssMb,
  spread,
  toNhwc01,
  watch,
} from "./sd-cost.ts";

const { values: args } = parseArgs({
  options: {
    model: { type: "string", default: "sd15" },
    export: { type: "string" },
    pytorch: { type: "string" },
    rounds: { type: "string" },
    steps: { type: "string" },
    guidance: { type: "string", default: "7.5" },
    sampler: { type: "string", default: "euler" },
    threads: { type: "string", default: "1" },
    json: { type: "string" },
    separate: { type: "boolean" },
  },
});
const SD = join(GPU_RUNNER, "sd-fixtures");
const TARGETS: Record<
  string,
  { export: string; pytorch: string; size: number; steps: number; rounds: number; separate: boolean }
> = {
  sd15: {
    export: join(FIXTURES, "sd15"),
    pytorch: join(SD, "out", "pt", "sd15"),
    size: 64,
    steps: 20,
    rounds: 15,
    separate: false,
  },
  full: {
    export: fullExport("sd15") ?? join(FULL_DIR, "sd15-fp16"),
    pytorch: join(FULL_DIR, "sd15-pt32"),
    size: 512,
    steps: 2,
    rounds: 2,
    separate: true,
  },
};
const target = TARGETS[args.model!];
if (target === undefined) throw new Error(`--model ${args.model}: one of ${Object.keys(TARGETS).join(", ")}`);
// Absolute: the Python peer runs in sd-fixtures/.
const exportDir = resolve(args.export ?? target.export);
const pytorchDir = resolve(args.pytorch ?? target.pytorch);
for (const [what, dir] of [
  ["export", exportDir],
  ["pytorch pipeline", pytorchDir],
] as const) {
  if (!existsSync(dir))
    throw new Error(`${what} ${dir} not found: build it with sd-fixtures/ (make_fixtures.py, full_size.py)`);
}
const rounds = Number(args.rounds ?? target.rounds);
// Full size: the runner (~10 GB at 512² with CFG) and both Python pipelines do not fit in 24 GB together, so each
// image runs in a freshly loaded pipeline, one resident at a time (loads not timed, first-run costs included).
const separate = args.separate ?? target.separate;
const steps = Number(args.steps ?? target.steps);
const threads = Number(args.threads);
// The diffusers class of the runner's sampler (deterministic ones only: no noise is shared with the peers).
const samplerName = args.sampler as "euler" | "ddim";
const schedulerClass = Object.entries(SCHEDULER_CLASSES).find(([, name]) => name === samplerName)?.[0];
if (schedulerClass === undefined || !["euler", "ddim"].includes(samplerName))
  throw new Error(`--sampler ${samplerName}: euler or ddim`);
const tmp = mkdtempSync(join(tmpdir(), "sd-peers-"));

const request: GenerationRequest = {
  prompt: "a photograph of an astronaut riding a horse",
  negative_prompt: "",
  seed: 0,
  sampler: samplerName,
  steps,
  guidance: Number(args.guidance),
  width: target.size,
  height: target.size,
};
const latentShape = [1, 4, target.size / 8, target.size / 8] as [number, number, number, number];
// Unit-Gaussian starting latents from the runner's own generator, handed to every peer as the same file.
const initial = prepareLatents([7], latentShape, 1).latents;
const latentsFile = join(tmp, "latents.f32");
writeFileSync(latentsFile, initial);

const loadStart = machineLoad();
type Peer = "runner" | "optimum" | "diffusers";
const PEERS: Peer[] = ["runner", "optimum", "diffusers"];
const times: Record<Peer, number[]> = { runner: [], optimum: [], diffusers: [] };
const unetTimes: Record<Peer, number[]> = { runner: [], optimum: [], diffusers: [] };
const loads: Partial<Record<Peer, Array<{ load_ms: number; rss_mb: number }>>> = {};
const images: Partial<Record<Peer, Float32Array>> = {};

/** sd_peers.py, holding both Python pipelines or one (`only`). */
async function startPython(only?: Peer) {
  const python = spawn(
    join(SD, ".venv", "bin", "python"),
    [
      join(SD, "sd_peers.py"),
      "--export",
      exportDir,
      "--pytorch",
      pytorchDir,
      "--threads",
      String(threads),
      "--scheduler",
      schedulerClass!,
      ...(only ? ["--only", only] : []),
    ],
    { cwd: SD, stdio: ["pipe", "pipe", "inherit"] },
  );
  const lines = createInterface({ input: python.stdout })[Symbol.asyncIterator]();
  const nextLine = async (): Promise<Record<string, unknown>> => {
    const { value, done } = await lines.next();
    if (done) throw new Error("sd_peers.py exited");
    return JSON.parse(value as string) as Record<string, unknown>;
  };
  const ready = await nextLine();
  for (const peer of ["optimum", "diffusers"] as const)
    if (ready[peer]) (loads[peer] ??= []).push(ready[peer] as { load_ms: number; rss_mb: number });
  const exited = new Promise((done) => python.once("exit", done));
  return { python, nextLine, close: async () => (python.stdin.end(), await exited) };
}

async function openRunner() {
  const rss0 = rssMb();
  const t0 = performance.now();
  const bundle = await loadBundle(imported.dir, {
    executionProviders: ["cpu"],
    intraOpNumThreads: threads,
    allowSpinning: false,
  });
  (loads.runner ??= []).push({ load_ms: performance.now() - t0, rss_mb: rssMb() - rss0 });
  return { bundle, unetLog: watch(bundle.components.unet) };
}

// Resident (fixtures): the Python peers load first, in their own process, so the runner's RSS is its own.
const resident = separate ? undefined : await startPython();
const imported = importInChild(exportDir, join(tmp, "models"), "bench");
const runner = separate ? undefined : await openRunner();

async function runOnce(peer: Peer): Promise<void> {
  if (peer === "runner") {
    const { bundle, unetLog } = runner ?? (await openRunner());
    let decoded: Float32Array | undefined;
    unetLog.ms.length = 0;
    const start = performance.now();
    await generate(bundle, request, {
      latents: {
        initial,
        noise: () => {
          throw new Error(`${samplerName} draws no noise`);
        },
      },
      inspect: (s) => (decoded = s.decoded),
    });
    times.runner.push(performance.now() - start);
    unetTimes.runner.push(...unetLog.ms);
    images.runner ??= toNhwc01(decoded!, target!.size, target!.size);
    if (runner === undefined) await bundle.release();
    return;
  }
  const python = resident ?? (await startPython(peer));
  const imageFile = join(tmp, `${peer}.f32`);
  python.python.stdin.write(
    `${JSON.stringify({ peer, ...request, latents: latentsFile, latent_shape: latentShape, image: images[peer] ? undefined : imageFile })}\n`,
  );
  const reply = (await python.nextLine()) as { ms: number; unet_ms: number[] };
  times[peer].push(reply.ms);
  unetTimes[peer].push(...reply.unet_ms);
  images[peer] ??= new Float32Array(readFileSync(imageFile).buffer.slice(0));
  if (resident === undefined) await python.close();
}

if (!separate) {
  // One warm-up image each (first-run allocations, ONNX Runtime's arena), not counted.
  for (const peer of PEERS) await runOnce(peer);
  for (const peer of PEERS) (times[peer].length = 0), (unetTimes[peer].length = 0);
}
for (let r = 0; r < rounds; r++) {
  for (let i = 0; i < PEERS.length; i++) {
    const peer = PEERS[(r + i) % PEERS.length]!;
    await runOnce(peer);
    console.error(
      `[load ${machineLoad()}] round ${r + 1}/${rounds} ${peer}: ${(times[peer].at(-1)! / 1000).toFixed(2)} s`,
    );
  }
}
await resident?.close();
await runner?.bundle.release();

const maxDiff = (a?: Float32Array, b?: Float32Array) =>
  a && b ? a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0) : NaN;
const result = {
  model: args.model,
  export: exportDir,
  pytorch: pytorchDir,
  request,
  threads,
  rounds,
  load_average: { start: loadStart, end: machineLoad() },
  separate_processes: separate,
  load: Object.fromEntries(
    PEERS.map((p) => [
      p,
      { load_ms: spread(loads[p]!.map((l) => l.load_ms)), rss_mb: spread(loads[p]!.map((l) => l.rss_mb)) },
    ]),
  ),
  runner_peak_rss_mb: maxRssMb(),
  ms_per_image: Object.fromEntries(PEERS.map((p) => [p, spread(times[p])])),
  unet_ms_per_call: Object.fromEntries(PEERS.map((p) => [p, spread(unetTimes[p])])),
  image_max_abs_diff: {
    runner_vs_optimum: maxDiff(images.runner, images.optimum),
    runner_vs_diffusers: maxDiff(images.runner, images.diffusers),
  },
};
rmSync(tmp, { recursive: true, force: true });
if (args.json) writeFileSync(args.json, `${JSON.stringify(result, null, 2)}\n`);
console.log(JSON.stringify(result, null, 2));
const f = (x: number) => (x >= 100 ? x.toFixed(0) : x.toFixed(1));
console.log(
  `\n${args.model}: ${target.size}², ${steps} ${samplerName} steps (${schedulerClass}), guidance ${request.guidance}, ${threads} thread(s), ${rounds} interleaved rounds${separate ? " (each image in a fresh process/session)" : ""}; load average ${loadStart} → ${result.load_average.end}\n`,
);
console.log(
  "| peer | ms/image median | min | max | U-Net ms/call median (min–max) | load ms median | RSS after load MB median |",
);
console.log("|---|---|---|---|---|---|---|");
for (const p of PEERS) {
  const t = result.ms_per_image[p]!;
  const u = result.unet_ms_per_call[p]!;
  const l = result.load[p]!;
  console.log(
    `| ${p} | ${f(t.median)} | ${f(t.min)} | ${f(t.max)} | ${f(u.median)} (${f(u.min)}–${f(u.max)}) | ${f(l.load_ms.median)} | ${f(l.rss_mb.median)} |`,
  );
}
