#!/usr/bin/env node
/**
 * prompt → PNG from a model bundle, for people who only want the runner. Generation runs in an inference
 * worker, so the progress bar on stderr keeps moving.
 *
 * From the repository root (Node ≥ 22.12 runs the .ts directly; `npx node` is the project-local Node 22):
 *
 *   npx node gpu-runner/src/cli.ts "a large red circle on the left, blue background" --sampler lcm --steps 4 --out c.png
 */
import { writeFileSync } from "node:fs";
import { dirname, extname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { SessionConfigSchema } from "./pipeline/bundle.ts";
import { SamplerName } from "@imagegen/formats/manifest";
import { GenerationRequest } from "./pipeline/request.ts";
import { InferencePool } from "./workers/pool.ts";

const DEFAULT_BUNDLE = join(dirname(fileURLToPath(import.meta.url)), "..", "models", "tiny-shapes");

const USAGE = `usage: imagegen-runner <prompt> [options]
  --bundle <dir>           model bundle (default: models/tiny-shapes)
  --sampler <name>         ddim | lcm | rectified-flow | euler | euler-a | dpm++2m | dpm++2m-karras (default: the model's)
  --steps <n>              sampling steps (default: the model's)
  --seed <n>               seed (default 0); image i uses seed + i
  --guidance <w>           guidance scale (default: the model's)
  --negative <text>        negative prompt for classifier-free guidance
  --cache-interval <n>     DeepCache: a full U-Net pass every n steps
  --cache-schedule <s>     uniform | non-uniform (default uniform)
  --n <n>                  images (default 1)
  --out <file.png>         output (default out.png; out-0.png, out-1.png, ... when n > 1)
  --ep <list>              execution providers, comma-separated (default cpu; cuda in the GPU image)
  --threads <n>            intra-op threads per session (default 1, measured best here; 0 lets ONNX Runtime decide)
  --force-sampler          run a sampler the model was not trained for (benchmarking only)`;

function fail(message: string, code = 2): never {
  process.stderr.write(`${message}\n${code === 2 ? `${USAGE}\n` : ""}`);
  process.exit(code);
}

function progressBar(step: number, steps: number, startedMs: number): string {
  const width = 30;
  const filled = Math.round((step / steps) * width);
  const seconds = ((performance.now() - startedMs) / 1000).toFixed(1);
  return `\r[${"#".repeat(filled)}${".".repeat(width - filled)}] ${step}/${steps} steps ${seconds}s`;
}

function outputPaths(out: string, n: number): string[] {
  if (n === 1) return [out];
  const ext = extname(out) || ".png";
  const stem = out.slice(0, out.length - extname(out).length);
  return Array.from({ length: n }, (_, i) => `${stem}-${i}${ext}`);
}

async function main(): Promise<void> {
  let parsed;
  try {
    parsed = parseArgs({
      allowPositionals: true,
      options: {
        bundle: { type: "string", default: DEFAULT_BUNDLE },
        sampler: { type: "string" },
        steps: { type: "string" },
        seed: { type: "string", default: "0" },
        guidance: { type: "string" },
        negative: { type: "string", default: "" },
        "cache-interval": { type: "string" },
        "cache-schedule": { type: "string", default: "uniform" },
        n: { type: "string", default: "1" },
        out: { type: "string", default: "out.png" },
        ep: { type: "string", default: "cpu" },
        threads: { type: "string", default: "1" },
        "force-sampler": { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
    });
  } catch (err) {
    fail((err as Error).message);
  }
  const { values, positionals } = parsed;
  if (values.help) fail("", 0);
  if (positionals.length !== 1) fail("give exactly one prompt (quote it)");
  const num = (flag: string, v: string | undefined) => {
    if (v === undefined) return undefined;
    const x = Number(v);
    if (!Number.isFinite(x)) fail(`--${flag} must be a number, got "${v}"`);
    return x;
  };
  const sampler = values.sampler === undefined ? undefined : SamplerName.safeParse(values.sampler);
  if (sampler && !sampler.success) fail(`--sampler must be one of ${SamplerName.options.join(", ")}`);
  const interval = num("cache-interval", values["cache-interval"]);
  const request = GenerationRequest.safeParse({
    prompt: positionals[0],
    negative_prompt: values.negative,
    sampler: sampler?.data,
    steps: num("steps", values.steps),
    seed: num("seed", values.seed),
    guidance: num("guidance", values.guidance),
    n: num("n", values.n),
    cache: interval === undefined ? null : { mode: "deepcache", interval, schedule: values["cache-schedule"] },
    forceSampler: values["force-sampler"],
  });
  if (!request.success) fail(request.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("\n"));
  const session = SessionConfigSchema.safeParse({
    executionProviders: values.ep.split(",").map((s) => s.trim()),
    intraOpNumThreads: num("threads", values.threads),
  });
  if (!session.success)
    fail(
      session.error.issues
        .map((i) => `--${i.path[0] === "executionProviders" ? "ep" : "threads"}: ${i.message}`)
        .join("\n"),
    );

  const pool = new InferencePool({ size: 1, session: session.data });
  const started = performance.now();
  try {
    const result = await pool.generate(values.bundle, request.data, {
      onProgress: ({ step, steps }) => process.stderr.write(progressBar(step, steps, started)),
    });
    process.stderr.write("\n");
    const paths = outputPaths(values.out, result.images.length);
    result.images.forEach((png, i) => writeFileSync(paths[i]!, png));
    const t = result.timings;
    process.stderr.write(
      `${result.sampler} ${result.steps} steps, seed ${result.seeds[0]}, guidance ${result.guidance}` +
        `${result.classifierFreeGuidance ? " (CFG)" : ""}: ${t.totalMs.toFixed(1)} ms ` +
        `(text ${t.textEncoderMs.toFixed(1)}, U-Net ${t.unetMs.toFixed(1)}, VAE ${t.vaeMs.toFixed(1)}, PNG ${t.pngMs.toFixed(1)})\n`,
    );
    process.stdout.write(paths.join("\n") + "\n");
  } catch (err) {
    process.stderr.write("\n");
    fail(`${(err as Error).name}: ${(err as Error).message}`, 1);
  } finally {
    await pool.close();
  }
}

await main();
