#!/usr/bin/env node
/**
 * The parsers' fuzzers (fast-check properties in formats/src/*.fuzz.test.ts and gpu-runner/test/control-image.fuzz.test.ts).
 * `npm test` runs them bounded (fixed seed, small counts). This runs them long, random seed, and rewrites the tables in
 * tests/fuzz/REPORT.md (the findings above them are written by hand):
 *
 *   npm run test:fuzz                         # FUZZ_RUNS=200000 per property, at most FUZZ_SECONDS=60 each
 *   FUZZ_SECONDS=20 FUZZ_SEED=123 npm run test:fuzz
 *   npm run test:fuzz -- --bounded            # the bounded run, for its table
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, existsSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const root = resolve(import.meta.dirname, "..");
const bounded = process.argv.includes("--bounded");
const log = join(mkdtempSync(join(tmpdir(), "fuzz-")), "fuzz.jsonl");
const env = { ...process.env, FUZZ_LOG: log };
if (bounded) delete env.FUZZ_RUNS;
else {
  env.FUZZ_RUNS ??= "200000";
  env.FUZZ_SECONDS ??= "60";
  env.FUZZ_SEED ??= String(Math.floor(Math.random() * 2 ** 31));
}
const vitest = join(root, "node_modules/vitest/vitest.mjs");
const suites = [
  {
    cwd: "formats",
    files: [
      "src/safetensors.fuzz.test.ts",
      "src/tar.fuzz.test.ts",
      "src/onnx-reader.fuzz.test.ts",
      "src/manifest.fuzz.test.ts",
    ],
  },
  { cwd: "gpu-runner", files: ["test/control-image.fuzz.test.ts"] },
];
let failed = false;
for (const s of suites) {
  const r = spawnSync(process.execPath, [vitest, "run", ...s.files], { cwd: join(root, s.cwd), env, stdio: "inherit" });
  failed ||= r.status !== 0;
}

const records = existsSync(log)
  ? readFileSync(log, "utf8")
      .trim()
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l))
  : [];
const total = records.reduce((n, r) => n + r.executions, 0);
const when = new Date().toISOString().slice(0, 16).replace("T", " ");
const mode = bounded
  ? "bounded (`npm test`: fixed seed)"
  : `long (\`npm run test:fuzz\`: FUZZ_RUNS=${env.FUZZ_RUNS}, FUZZ_SECONDS=${env.FUZZ_SECONDS})`;
const table = [
  `Run ${when} UTC, ${mode}: ${total} executions over ${records.length} properties, ${records.filter((r) => r.failed).length} failing.`,
  "",
  "| parser | property | executions | seconds | seed | result |",
  "| --- | --- | ---: | ---: | ---: | --- |",
  ...records.map(
    (r) =>
      `| ${r.suite} | ${r.property} | ${r.executions} | ${(r.ms / 1000).toFixed(1)} | ${r.seed} | ${r.failed ? "**FAILED**" : r.interrupted ? "ok (time limit)" : "ok"} |`,
  ),
  ...records
    .filter((r) => r.failed)
    .map(
      (r) =>
        `\n<details><summary>${r.suite}: ${r.property}</summary>\n\n\`\`\`\n${r.counterexample}\n\`\`\`\n</details>`,
    ),
].join("\n");

const reportPath = join(root, "tests/fuzz/REPORT.md");
const marker = bounded ? "bounded" : "long";
const [open, close] = [`<!-- fuzz:${marker} -->`, `<!-- /fuzz:${marker} -->`];
const report = existsSync(reportPath) ? readFileSync(reportPath, "utf8") : `# Fuzzing report\n\n${open}\n${close}\n`;
const at = report.indexOf(open);
const end = report.indexOf(close);
writeFileSync(
  reportPath,
  at >= 0 && end > at
    ? `${report.slice(0, at + open.length)}\n${table}\n${report.slice(end)}`
    : `${report}\n${open}\n${table}\n${close}\n`,
);
console.log(`\n${total} executions, ${records.length} properties; ${reportPath} updated`);
process.exit(failed ? 1 : 0);
