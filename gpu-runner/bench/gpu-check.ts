/**
 * The GPU check (`infra/gpu/check.sh`, or `npm run gpu-check -w gpu-runner -- [--provider cuda|cpu]`): every
 * Stable Diffusion fixture family (test/fixtures/sd/) and the full-size exports when present
 * (sd-fixtures/out/full/{sd15,sdxl}-fp16, fp16) are imported, loaded on the execution provider, and generate one
 * image after a warm-up image (cuDNN's algorithm search, the arena). Per model: load time, image time, each U-Net
 * step, FLOPs per step (bench/flops.ts, counted on the CPU) and the floor per step: FLOPs ÷ the H100/H200 datasheet
 * fp16 peak on CUDA, ÷ this CPU's measured matrix-product peak with `--provider cpu` (how the script is checked on a
 * machine without a GPU). On CUDA it also tries keeping the U-Net's output on the device (`preferredOutputLocation`)
 * and says whether onnxruntime-node allowed it. Prints JSON and a markdown table, and writes both to `--out`
 * (default bench/GPU-CHECK.md and .json on CUDA, the temp folder otherwise).
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import * as ort from "onnxruntime-node";
import { loadBundle } from "../src/pipeline/bundle.ts";
import { generate } from "../src/pipeline/pipeline.ts";
import type { GenerationRequest } from "../src/pipeline/request.ts";
import { sustainedMatmulFlops } from "./flops.ts";
import {
  componentFlops,
  FAMILIES,
  FIXTURES,
  FULL_DIR,
  fullExport,
  GPU_DATASHEET,
  importForBench,
  machineLoad,
  referenceRequest,
  spread,
  watch,
  weightBytes,
} from "./sd-cost.ts";

const { values: args } = parseArgs({
  options: {
    provider: { type: "string", default: "cuda" },
    threads: { type: "string", default: "0" },
    families: { type: "string", default: FAMILIES.join(",") },
    full: { type: "string", default: "sd15,sdxl" },
    "full-steps": { type: "string", default: "20" },
    "no-flops": { type: "boolean", default: false },
    out: { type: "string" },
  },
});
const provider = args.provider as "cuda" | "cpu";
if (provider !== "cuda" && provider !== "cpu") throw new Error(`--provider ${provider}: cuda or cpu`);
const out =
  args.out ?? (provider === "cuda" ? join(import.meta.dirname, "GPU-CHECK.md") : join(tmpdir(), "gpu-check-cpu.md"));
const log = (msg: string) => console.error(`[${new Date().toISOString().slice(11, 19)} load ${machineLoad()}] ${msg}`);

function nvidiaSmi(query: string): string | undefined {
  try {
    return execFileSync("nvidia-smi", [`--query-gpu=${query}`, "--format=csv,noheader,nounits"], {
      encoding: "utf8",
    }).trim();
  } catch {
    return undefined;
  }
}
const gpuMemoryMb = () => Number(nvidiaSmi("memory.used")?.split("\n")[0]) || undefined;

// The peak a step is held against: the datasheet on CUDA (H100 and H200 share the fp16 figure), the measured GEMM on CPU.
const peak =
  provider === "cuda"
    ? { on: "H100/H200 SXM datasheet fp16 dense", flops: GPU_DATASHEET["H200 SXM"].fp16Flops }
    : { on: "this CPU, measured fp32 GEMM 2048", flops: await sustainedMatmulFlops(2048, Number(args.threads)) };

interface Model {
  name: string;
  exportDir: string;
  request: GenerationRequest;
}
const models: Model[] = args
  .families!.split(",")
  .filter(Boolean)
  .map((family) => ({ name: family, exportDir: join(FIXTURES, family), request: referenceRequest(family) }));
for (const name of args.full!.split(",").filter(Boolean)) {
  const dir = fullExport(name);
  if (dir === undefined) {
    log(`${name}-fp16: not found in ${FULL_DIR} (sd-fixtures/full_size.py ${name} builds it): skipped`);
    continue;
  }
  models.push({
    name: `${name}-fp16 (full size)`,
    exportDir: dir,
    request: {
      prompt: "a photograph of an astronaut riding a horse",
      seed: 7,
      steps: Number(args["full-steps"]),
      guidance: 7.5,
    },
  });
}

interface Row {
  model: string;
  dtype: string;
  size: number;
  steps: number;
  sampler: string;
  unetBatch: number;
  loadMs: number;
  imageMs: number;
  unetMsPerStep: number[];
  textMs: number;
  vaeMs: number;
  gflopsPerStep?: number;
  floorMsPerStep?: number;
  weightsMb: number;
  gpuMemoryMb?: number;
  deviceOutput?: { ok: boolean; msPerStep?: number; error?: string };
}

const tmp = mkdtempSync(join(tmpdir(), "gpu-check-"));
const rows: Row[] = [];
const started = machineLoad();
async function checkModel(model: Model): Promise<Row> {
  log(`${model.name}: import, load on ${provider}`);
  const { dir } = await importForBench(model.exportDir, join(tmp, "models"), model.name.split(" ")[0]!);
  const t0 = performance.now();
  const bundle = await loadBundle(dir, {
    executionProviders: [provider],
    intraOpNumThreads: Number(args.threads),
    allowSpinning: false,
  });
  const loadMs = performance.now() - t0;
  const unetLog = watch(bundle.components.unet);
  const textLog = watch(bundle.components.text_encoder);
  const vaeLog = watch(bundle.components.vae_decoder);
  await generate(bundle, model.request); // warm-up
  for (const l of [unetLog, textLog, vaeLog]) l.ms.length = 0;
  const s = performance.now();
  const gen = await generate(bundle, model.request);
  const imageMs = performance.now() - s;
  const unet = bundle.components.unet;
  const row: Row = {
    model: model.name,
    dtype: unet.spec.inputs.find((t) => t.name === "sample")?.dtype ?? "?",
    size: gen.width,
    steps: gen.steps,
    sampler: gen.sampler,
    unetBatch: unetLog.feeds?.sample?.dims[0] ?? 1,
    loadMs,
    imageMs,
    unetMsPerStep: [...unetLog.ms],
    textMs: textLog.ms.reduce((a, b) => a + b, 0),
    vaeMs: vaeLog.ms.reduce((a, b) => a + b, 0),
    weightsMb: weightBytes(dir, unet) / 1e6,
    gpuMemoryMb: gpuMemoryMb(),
  };
  if (provider === "cuda") {
    // Outputs left on the device skip the copy back each step; onnxruntime-node may refuse it for CUDA.
    try {
      const session = await ort.InferenceSession.create(join(dir, unet.spec.path), {
        executionProviders: ["cuda"],
        preferredOutputLocation: "gpu-buffer",
      });
      const feeds = unetLog.feeds!;
      await session.run(feeds);
      const ms: number[] = [];
      for (let i = 0; i < 5; i++) {
        const t = performance.now();
        const result = await session.run(feeds);
        ms.push(performance.now() - t);
        for (const v of Object.values(result)) v.dispose();
      }
      await session.release();
      row.deviceOutput = { ok: true, msPerStep: spread(ms).median };
    } catch (err) {
      row.deviceOutput = { ok: false, error: (err as Error).message.split("\n")[0] };
    }
  }
  await bundle.release();
  if (!args["no-flops"]) {
    // Counted on the CPU (an unoptimised profile): the count is the graph's, whatever runs it.
    const cpuBundle = await loadBundle(dir, {
      executionProviders: ["cpu"],
      intraOpNumThreads: 0,
      allowSpinning: false,
    });
    const { flops } = await componentFlops(dir, cpuBundle.components.unet, unetLog.feeds!);
    await cpuBundle.release();
    row.gflopsPerStep = flops / 1e9;
    row.floorMsPerStep = (flops / peak.flops) * 1e3;
  }
  log(
    `${model.name}: load ${(loadMs / 1000).toFixed(2)} s, image ${(imageMs / 1000).toFixed(3)} s, U-Net ${spread(row.unetMsPerStep).median.toFixed(2)} ms/step`,
  );
  return row;
}

const failures: Array<{ model: string; error: string }> = [];
for (const model of models) {
  try {
    rows.push(await checkModel(model));
  } catch (err) {
    // One model that does not load or run is reported with the rest, not the end of the check.
    failures.push({ model: model.name, error: (err as Error).message.replace(/\s+/g, " ").slice(0, 600) });
    log(`${model.name}: FAILED: ${(err as Error).message}`);
  }
}
rmSync(tmp, { recursive: true, force: true });

const device = provider === "cuda" ? (nvidiaSmi("name,memory.total,driver_version") ?? "nvidia-smi not found") : "CPU";
const report = {
  provider,
  device,
  onnxruntime_node: ort.env.versions.common,
  peak,
  load_average: { start: started, end: machineLoad() },
  rows,
  failures,
};
const f = (x: number | undefined, d = 1) => (x === undefined ? "–" : x.toFixed(d));
const table = [
  `GPU check, provider ${provider} (${device}), onnxruntime-node ${ort.env.versions.common}; floor = U-Net FLOPs per step ÷ ${(peak.flops / 1e12).toFixed(3)} TFLOPS (${peak.on}); load average ${started} → ${report.load_average.end}`,
  "",
  "| model | dtype | size | sampler × steps | U-Net batch | load s | image s | U-Net ms/step median (min–max) | GFLOP/step | floor ms/step | measured ÷ floor | text ms | VAE ms | U-Net weights MB | GPU memory used MB | output kept on device |",
  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ...rows.map((r) => {
    const u = spread(r.unetMsPerStep);
    const device = r.deviceOutput
      ? r.deviceOutput.ok
        ? `yes: ${f(r.deviceOutput.msPerStep, 2)} ms/step`
        : `no: ${r.deviceOutput.error}`
      : "–";
    return `| ${r.model} | ${r.dtype} | ${r.size}² | ${r.sampler} × ${r.steps} | ${r.unetBatch} | ${f(r.loadMs / 1000, 2)} | ${f(r.imageMs / 1000, 3)} | ${f(u.median, 2)} (${f(u.min, 2)}–${f(u.max, 2)}) | ${r.gflopsPerStep?.toPrecision(3) ?? "–"} | ${r.floorMsPerStep?.toPrecision(3) ?? "–"} | ${r.floorMsPerStep ? `${f(u.median / r.floorMsPerStep, 0)}×` : "–"} | ${f(r.textMs)} | ${f(r.vaeMs)} | ${f(r.weightsMb, 0)} | ${f(r.gpuMemoryMb, 0)} | ${device} |`;
  }),
  ...failures.map((x) => `| ${x.model} | **failed**: ${x.error} |`),
].join("\n");
writeFileSync(out, `${table}\n`);
writeFileSync(out.replace(/\.md$/, "") + ".json", `${JSON.stringify(report, null, 2)}\n`);
console.log(JSON.stringify(report, null, 2));
console.log(`\n${table}\n\n(written to ${out} and .json)`);
if (failures.length > 0) process.exitCode = 1;
