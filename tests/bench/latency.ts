/**
 * End-to-end latency of one LCM-4 image on the whole local stack (`npm run bench -w tests`): request to a
 * downloadable URL as a client sees it, with the job's own breakdown (queue wait, add-on load, inference by stage,
 * upload), and the URL's first byte. Written to tests/bench/LATENCY.md.
 */
import { writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { api, startStack } from "../e2e/stack.ts";

const N = Number(process.env.ROUNDS ?? 10);
const stack = await startStack({ runners: 1 });
try {
  const models = stack.models;
  const model = models.includes("tiny-shapes-lcm")
    ? "tiny-shapes-lcm"
    : (models.find((m) => m.endsWith("-lcm")) ?? stack.defaultModel);
  const body = (seed: number) => ({
    model,
    prompt: "a large red circle on the left, blue background",
    sampler: "lcm",
    steps: 4,
    seed,
  });
  await api(stack, "POST", "/v1/generations", stack.apiKey, body(0), { prefer: "wait=60" }); // warm-up: sessions load
  const rows: Array<{ client: number; download: number; t: Record<string, number> }> = [];
  for (let i = 1; i <= N; i++) {
    const start = performance.now();
    const g = await api(stack, "POST", "/v1/generations", stack.apiKey, body(i), { prefer: "wait=60" });
    const client = performance.now() - start;
    if (g.body.status !== "succeeded") throw new Error(JSON.stringify(g.body));
    const d0 = performance.now();
    await (await fetch(g.body.images[0].url)).arrayBuffer();
    rows.push({ client, download: performance.now() - d0, t: g.body.timings });
  }
  const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const col = (k: string) => med(rows.map((r) => r.t[k] ?? 0));
  const lines = [
    ["request → downloadable URL (client)", med(rows.map((r) => r.client))],
    ["  edge: queue wait (created → leased)", col("queue_ms")],
    ["  runner: add-on load", col("addon_load_ms")],
    ["  runner: inference (text + U-Net + VAE + PNG, in the worker)", col("inference_ms")],
    ["    text encoder", col("text_encoder_ms")],
    ["    U-Net, 4 steps", col("unet_ms")],
    ["    VAE decoder", col("vae_ms")],
    ["    PNG", col("png_ms")],
    ["  runner: upload (presigned PUT)", col("upload_ms")],
    ["  edge: created → completed", col("total_ms")],
    ["download of the image (signed GET)", med(rows.map((r) => r.download))],
  ];
  const report = `# End-to-end latency, one LCM-4 image

Model \`${model}\`${model.includes("random") ? " (randomly initialised test bundle: the trained LCM model is not exported yet; timings only)" : ""}; whole local stack
(wrangler dev + local R2 + one runner, 1 worker, 1 thread) on 127.0.0.1; ${N} sequential requests with \`Prefer: wait=60\` after a warm-up;
medians. Load average at the end ${loadavg()
    .map((l) => l.toFixed(2))
    .join(" / ")} (other work on the machine raises it).
Command: \`npm run bench -w tests\`.

| stage | median ms |
| --- | ---: |
${lines.map(([k, v]) => `| ${k} | ${(v as number).toFixed(1)} |`).join("\n")}
`;
  writeFileSync(join(import.meta.dirname, "LATENCY.md"), report);
  process.stdout.write(report);
} finally {
  await stack.stop();
}
