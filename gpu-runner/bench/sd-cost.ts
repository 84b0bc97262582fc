/**
 * What the imported Stable Diffusion benches share (sd-fullsize.ts, sd-peers.ts, gpu-check.ts): importing an
 * export into a throwaway bundle, watching a component's session runs (per-run milliseconds and the first feeds, so
 * FLOPs are counted at the shapes the pipeline really used), and the physical floor of a U-Net step.
 */
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, statSync } from "node:fs";
import { loadavg } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { parseHeader } from "@imagegen/formats/safetensors";
import type * as ort from "onnxruntime-node";
import { importExport } from "../src/import/index.ts";
import type { Component, Feeds } from "../src/pipeline/bundle.ts";
import type { GenerationRequest } from "../src/pipeline/request.ts";
import { SCHEDULER_CLASSES } from "../src/samplers/index.ts";
import { countFlops } from "./flops.ts";
import { median } from "./stats.ts";

export const GPU_RUNNER = join(import.meta.dirname, "..");
export const FIXTURES = join(GPU_RUNNER, "test", "fixtures", "sd");
export const FAMILIES = ["sd15", "sd2v", "lcm", "sdxl", "turbo"] as const;
export const FULL_DIR = join(GPU_RUNNER, "sd-fixtures", "out", "full");

/**
 * A full-size fp16 export by sd-fixtures/full_size.py: `<name>-fp16` (traced in fp16) or `<name>-fp16-via-fp32`
 * (traced in fp32, converted by ONNX Runtime's float16 tool: the same graph in minutes instead of an hour on CPU).
 */
export function fullExport(name: string): string | undefined {
  return [`${name}-fp16`, `${name}-fp16-via-fp32`]
    .map((d) => join(FULL_DIR, d))
    .find((d) => existsSync(join(d, "model_index.json")));
}

/**
 * Datasheet peaks (NVIDIA H100 / H200 Tensor Core GPU datasheets, SXM parts, dense, i.e. without 2:4 sparsity):
 * FP16/BF16 tensor 989 TFLOPS on both (the H200 is the H100's compute with more, faster memory); HBM bandwidth
 * 3.35 TB/s (H100 SXM, 80 GB HBM3) and 4.8 TB/s (H200, 141 GB HBM3e). Datasheet values, not measured.
 */
export const GPU_DATASHEET = {
  "H100 SXM": { fp16Flops: 989e12, bytesPerS: 3.35e12 },
  "H200 SXM": { fp16Flops: 989e12, bytesPerS: 4.8e12 },
} as const;

/** `uptime`'s load averages: every number a bench prints on this shared machine carries them. */
export function machineLoad(): string {
  return loadavg()
    .map((x) => x.toFixed(2))
    .join(", ");
}

export const rssMb = () => process.memoryUsage().rss / 2 ** 20;
/** The process's peak resident set so far (Linux reports kilobytes). */
export const maxRssMb = () => process.resourceUsage().maxRSS / 1024;

/**
 * Imports `exportDir` in a child process (`src/import/cli.ts`, as a user would), so the memory the import reads the
 * graphs into is not counted in this process's RSS.
 */
export function importInChild(exportDir: string, out: string, name: string): { dir: string; ms: number } {
  const start = performance.now();
  const cli = join(GPU_RUNNER, "src", "import", "cli.ts");
  const dir = execFileSync(process.execPath, [cli, "import", exportDir, "--out", out, "--name", name, "--force"], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "inherit"],
  }).trim();
  return { dir, ms: performance.now() - start };
}

/** Imports `exportDir` (linked, not copied) as `<out>/<name>` and returns the bundle folder. */
export async function importForBench(
  exportDir: string,
  out: string,
  name: string,
): Promise<{ dir: string; ms: number }> {
  const start = performance.now();
  const { dir } = await importExport(exportDir, { out, name, force: true });
  return { dir, ms: performance.now() - start };
}

/** The settings make_references.py records in a reference's `__metadata__.settings`. */
export interface ReferenceSettings {
  prompt: string;
  negative_prompt: string | null;
  scheduler: string;
  steps: number;
  guidance_scale: number;
  height: number;
  width: number;
}

/** The runner's request for the same run: prompt, negative prompt, sampler of the scheduler class, steps, guidance, size. */
export function requestFromSettings(s: ReferenceSettings): GenerationRequest {
  return {
    prompt: s.prompt,
    negative_prompt: s.negative_prompt ?? "",
    seed: 0,
    sampler: SCHEDULER_CLASSES[s.scheduler]!,
    steps: s.steps,
    guidance: s.guidance_scale,
    width: s.width,
    height: s.height,
  };
}

/** The settings a fixture's `reference/base.safetensors` was made with (make_references.py), as a runner request. */
export function referenceRequest(family: string): GenerationRequest {
  const bytes = new Uint8Array(readFileSync(join(FIXTURES, family, "reference", "base.safetensors")));
  return requestFromSettings(JSON.parse(parseHeader(bytes, bytes.length).metadata.settings!) as ReferenceSettings);
}

export interface RunLog {
  /** Milliseconds of each session run since `watch`, in order. */
  ms: number[];
  /** The feeds of the first run, as the session got them (already in the graph's dtypes). */
  feeds?: Feeds;
}

/**
 * Times every run of a component's session and keeps its first feeds. The wrapper sits on the session object the
 * pipeline calls, so it sees exactly what generate() sends, dtype conversions done.
 */
export function watch(component: Component): RunLog {
  const log: RunLog = { ms: [] };
  const session = component.session;
  const run = session.run.bind(session) as (
    feeds: Feeds,
    ...rest: unknown[]
  ) => Promise<ort.InferenceSession.ReturnType>;
  (session as { run: unknown }).run = async (feeds: Feeds, ...rest: unknown[]) => {
    log.feeds ??= feeds;
    const start = performance.now();
    try {
      return await run(feeds, ...rest);
    } finally {
      log.ms.push(performance.now() - start);
    }
  };
  return log;
}

/** FLOPs of one run of a component at the feeds a pipeline gave it (the batch included), with the batch size. */
export async function componentFlops(
  bundleDir: string,
  component: Component,
  feeds: Feeds,
): Promise<{ flops: number; batch: number; byOp: Record<string, number> }> {
  const { flops, byOp } = await countFlops(join(bundleDir, component.spec.path), component.spec, feeds);
  const first = Object.values(feeds).find((t) => t.dims.length > 0);
  return { flops, batch: first?.dims[0] ?? 1, byOp };
}

/** Bytes of a component's weights (the .onnx file and its external data), read once per step at least. */
export function weightBytes(bundleDir: string, component: Component): number {
  const path = join(bundleDir, component.spec.path);
  const data = `${path}_data`;
  return statSync(path).size + (existsSync(data) ? statSync(data).size : 0);
}

export interface Floor {
  /** Device or peak, in words. */
  on: string;
  peakTflops: number;
  /** FLOPs ÷ peak. */
  computeMs: number;
  /** Weight bytes ÷ memory bandwidth, where known: a step reads every weight once. */
  memoryMs?: number;
}

/** The floor of a run of `flops` that reads `bytes` of weights, on the GPU datasheets and on CPU peaks given. */
export function floors(flops: number, bytes: number, cpuPeaks: Record<string, number>): Floor[] {
  return [
    ...Object.entries(cpuPeaks).map(([on, peak]) => ({ on, peakTflops: peak / 1e12, computeMs: (flops / peak) * 1e3 })),
    ...Object.entries(GPU_DATASHEET).map(([on, d]) => ({
      on: `${on} (datasheet fp16 dense)`,
      peakTflops: d.fp16Flops / 1e12,
      computeMs: (flops / d.fp16Flops) * 1e3,
      memoryMs: (bytes / d.bytesPerS) * 1e3,
    })),
  ];
}

/** This CPU in words, with its theoretical fp32 peak from lscpu (FMA width × pipes × cores × clock). */
export function cpuDescription(): {
  model: string;
  cores: number;
  mhz: number;
  flags: string[];
  theoreticalFp32Flops: number;
  basis: string;
} {
  let out = "";
  try {
    out = execFileSync("lscpu", { encoding: "utf8" });
  } catch {
    // No lscpu: described as unknown below.
  }
  const field = (name: string) => new RegExp(`^${name}:\\s*(.*)$`, "m").exec(out)?.[1]?.trim() ?? "";
  const flags = field("Flags").split(/\s+/);
  const interesting = flags.filter((f) => /^(avx2|fma|f16c|avx512f|avx512_bf16|avx512_fp16|amx_\w+)$/.test(f));
  const cores = Number(field("CPU\\(s\\)")) || 1;
  // Under KVM lscpu often has no MHz line: BogoMIPS is twice the clock on x86.
  const mhz = Number(field("CPU max MHz")) || Number(field("CPU MHz")) || Number(field("BogoMIPS")) / 2 || 0;
  // Two FMA pipes per core; AVX-512 counts 16 fp32 lanes, AVX2 8. AMD Zen 4 runs AVX-512 on 256-bit pipes, so its
  // peak is AVX2's: 2 pipes × 8 lanes × 2 FLOPs.
  const zen4 = /AMD/i.test(field("Vendor ID")) && field("CPU family") === "25";
  const lanes = flags.includes("avx512f") && !zen4 ? 16 : flags.includes("avx2") ? 8 : 4;
  const perCycle = 2 * lanes * 2;
  return {
    model: `${field("Vendor ID")} ${field("Model name")} (family ${field("CPU family")}, model ${field("Model")})`,
    cores,
    mhz,
    flags: interesting,
    theoreticalFp32Flops: perCycle * cores * mhz * 1e6,
    basis: `${perCycle} FLOP/cycle/core (2 FMA pipes × ${lanes} fp32 lanes${zen4 ? ", Zen 4: AVX-512 on 256-bit pipes" : ""}) × ${cores} cores × ${mhz.toFixed(0)} MHz`,
  };
}

/** Median, min and max of a sample, in the unit given. */
export function spread(xs: number[]): { median: number; min: number; max: number; n: number } {
  return { median: median(xs), min: Math.min(...xs), max: Math.max(...xs), n: xs.length };
}

/** The VAE decoder's planar [-1, 1] output as diffusers' `output_type="np"` image: NHWC, (x / 2 + 0.5) clamped to [0, 1]. */
export function toNhwc01(planar: Float32Array, height: number, width: number): Float32Array {
  const out = new Float32Array(planar.length);
  const plane = height * width;
  const images = planar.length / (3 * plane);
  for (let n = 0; n < images; n++) {
    for (let c = 0; c < 3; c++) {
      for (let p = 0; p < plane; p++)
        out[(n * plane + p) * 3 + c] = Math.min(1, Math.max(0, planar[(n * 3 + c) * plane + p]! / 2 + 0.5));
    }
  }
  return out;
}
