#!/usr/bin/env node
/**
 * Repository weight budget: fails when a tracked file, or the sum of the tracked binary files, grows past its budget.
 * Why and how the numbers were chosen: ARCHITECTURE.md, "Repository weight".
 *
 *   node scripts/repo-budget.mjs                      # this repository, the budgets below
 *   node scripts/repo-budget.mjs --root <dir> --max-file <bytes> --max-binary <bytes>
 */
import { execFileSync } from "node:child_process";
import { readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";

const MiB = 1024 * 1024;
/** Largest file today: gpu-runner/zoo/checkpoints/base.pt, 7.4 MiB. */
export const MAX_FILE_BYTES = 8 * MiB;
/** Tracked binaries on 2026-12-02: 62.4 MiB (bundles 31.2, stage checkpoints 24.6, SD fixtures 8). ARCHITECTURE.md says why. */
export const MAX_BINARY_BYTES = 72 * MiB;

const utf8 = new TextDecoder("utf-8", { fatal: true });

/** Binary as git diff would treat it: a NUL byte anywhere, or bytes that are not UTF-8. */
export function isBinary(bytes) {
  if (bytes.includes(0)) return true;
  try {
    utf8.decode(bytes);
    return false;
  } catch {
    return true;
  }
}

/** Sizes of the files git tracks under `root` (as checked out), and which of them are binary. */
export function measure(root) {
  const out = execFileSync("git", ["ls-files", "-z"], { cwd: root, maxBuffer: 64 * MiB });
  const files = [];
  for (const path of out.toString("utf8").split("\0")) {
    if (!path) continue;
    let size;
    try {
      const st = statSync(join(root, path));
      if (!st.isFile()) continue;
      size = st.size;
    } catch {
      continue; // deleted in the working tree, not yet in the index
    }
    files.push({ path, size, binary: isBinary(readFileSync(join(root, path))) });
  }
  return files;
}

/** The budget violations of `files` (empty when within budget). */
export function check(files, { maxFile = MAX_FILE_BYTES, maxBinary = MAX_BINARY_BYTES } = {}) {
  const problems = files
    .filter((f) => f.size > maxFile)
    .map((f) => `${f.path}: ${mib(f.size)} is over the per-file budget of ${mib(maxFile)}`);
  const binary = files.filter((f) => f.binary).reduce((s, f) => s + f.size, 0);
  if (binary > maxBinary) problems.push(`tracked binary files: ${mib(binary)} is over the budget of ${mib(maxBinary)}`);
  return { problems, binary };
}

const mib = (n) => `${(n / MiB).toFixed(2)} MiB`;

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({
    options: { root: { type: "string" }, "max-file": { type: "string" }, "max-binary": { type: "string" } },
  });
  const root = values.root ?? join(import.meta.dirname, "..");
  const files = measure(root);
  const budget = {
    maxFile: values["max-file"] ? Number(values["max-file"]) : MAX_FILE_BYTES,
    maxBinary: values["max-binary"] ? Number(values["max-binary"]) : MAX_BINARY_BYTES,
  };
  const { problems, binary } = check(files, budget);
  const largest = files.reduce((a, f) => (f.size > a.size ? f : a), { path: "-", size: 0 });
  const summary = `${files.length} tracked files; binary ${mib(binary)} of ${mib(budget.maxBinary)}; largest ${largest.path} ${mib(largest.size)} of ${mib(budget.maxFile)}`;
  if (problems.length) {
    console.error(
      `repo-budget: FAILED (${summary})\n  ${problems.join("\n  ")}\nSee ARCHITECTURE.md, "Repository weight": keep regenerable outputs out of git.`,
    );
    process.exit(1);
  }
  console.log(`repo-budget: ok (${summary})`);
}
