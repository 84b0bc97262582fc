/**
 * schemathesis (PyPI) against the local stack, driven by the committed OpenAPI document: every public operation
 * gets generated requests (valid and invalid), and every response must be no 5xx and conform to the document.
 * Starts the stack (tests/e2e/stack.ts), runs schemathesis with a tenant's API key, writes tests/schemathesis/REPORT.md,
 * exits non-zero on any failure.
 *
 *   node tests/schemathesis/run.ts [--max-examples 25] [--max-time 300] [--seed 1] [--no-report]
 *
 * schemathesis comes from SCHEMATHESIS (a path), else .ci/.venv/bin/schemathesis, else PATH.
 */
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { startStack } from "../e2e/stack.ts";
import { schemathesisBinary } from "./run-support.ts";

const root = resolve(import.meta.dirname, "../..");
const { values: opts } = parseArgs({
  options: {
    "max-examples": { type: "string", default: "25" },
    "max-time": { type: "string", default: "300" },
    seed: { type: "string", default: "1" },
    "no-report": { type: "boolean", default: false },
    /** Only the operations whose path matches (schemathesis --include-path-regex), to chase one finding. */
    path: { type: "string" },
  },
});

const bin = schemathesisBinary();
if (!bin) {
  console.error("schemathesis is not installed: `pip install schemathesis` (CI: .ci/run installs it into .ci/.venv)");
  process.exit(2);
}
const version = spawnSync(bin, ["--version"], { encoding: "utf8" }).stdout.trim();

const stack = await startStack({ runners: 1 });
const reportDir = mkdtempSync(join(tmpdir(), "schemathesis-"));
const jsonPath = join(reportDir, "run.json");
let status = 1;
let output = "";
try {
  const args = [
    "run",
    join(root, "contracts/openapi/public.json"),
    "--url",
    stack.edgeUrl,
    "-H",
    `Authorization: Bearer ${stack.apiKey}`,
    "--checks",
    "not_a_server_error,response_schema_conformance",
    "--phases",
    "examples,coverage,fuzzing",
    "--max-examples",
    opts["max-examples"],
    "--max-time",
    opts["max-time"],
    "--seed",
    opts.seed,
    "--workers",
    "1",
    "--request-timeout",
    "30",
    "--generation-database",
    "none",
    "--no-color",
    "--report",
    "ndjson",
    "--report-ndjson-path",
    jsonPath,
    ...(opts.path ? ["--include-path-regex", opts.path] : []),
  ];
  // In the temporary folder: schemathesis keeps a cache (.schemathesis/) in its working directory.
  const child = spawn(bin, args, { cwd: reportDir, stdio: ["ignore", "pipe", "pipe"] });
  child.stdout.on("data", (d) => {
    output += d;
    process.stdout.write(d);
  });
  child.stderr.on("data", (d) => {
    output += d;
    process.stderr.write(d);
  });
  status = await new Promise<number>((r) => child.on("close", (code) => r(code ?? 1)));
} finally {
  writeFileSync(join(reportDir, "stack.log"), stack.logs());
  await stack.stop();
}

/** The summary schemathesis prints last (operations, test cases, failures), kept verbatim in the report. */
const summary = output
  .slice(Math.max(0, output.lastIndexOf("=== SUMMARY") >= 0 ? output.lastIndexOf("=== SUMMARY") : output.length - 4000))
  .trim();
const cases = (output.match(/(\d+) generated/) ?? [])[1];
if (!opts["no-report"]) {
  const path = join(root, "tests/schemathesis/REPORT.md");
  const report = readFileSync(path, "utf8");
  const [open, close] = ["<!-- schemathesis:run -->", "<!-- /schemathesis:run -->"];
  const table = [
    `Run ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC: ${version}, --max-examples ${opts["max-examples"]}, --max-time ${opts["max-time"]}, --seed ${opts.seed}; exit ${status}${cases ? `, ${cases} test cases generated` : ""}.`,
    "",
    "```",
    summary,
    "```",
  ].join("\n");
  const at = report.indexOf(open);
  writeFileSync(path, `${report.slice(0, at + open.length)}\n${table}\n${report.slice(report.indexOf(close))}`);
}
console.log(`schemathesis exited ${status}; events in ${jsonPath}, stack log in ${join(reportDir, "stack.log")}`);
process.exit(status);
