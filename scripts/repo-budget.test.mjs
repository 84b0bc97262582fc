// The budget check against throwaway git repositories: a file over budget fails, within budget passes.
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { isBinary } from "./repo-budget.mjs";

const script = join(import.meta.dirname, "repo-budget.mjs");
const dirs = [];
after(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

function repo(files) {
  const dir = mkdtempSync(join(tmpdir(), "repo-budget-"));
  dirs.push(dir);
  execFileSync("git", ["init", "-q", dir]);
  for (const [name, bytes] of Object.entries(files)) writeFileSync(join(dir, name), bytes);
  execFileSync("git", ["add", "."], { cwd: dir });
  return dir;
}

const run = (dir, ...args) => spawnSync(process.execPath, [script, "--root", dir, ...args], { encoding: "utf8" });

test("a tracked file over the per-file budget fails", () => {
  const dir = repo({ "small.txt": "hello\n", "weights.bin": Buffer.alloc(4096, 1) });
  const r = run(dir, "--max-file", "2048", "--max-binary", String(1 << 20));
  assert.equal(r.status, 1);
  assert.match(r.stderr, /weights\.bin: .* over the per-file budget/);
});

test("tracked binaries over the total budget fail, text does not count", () => {
  const dir = repo({ "a.bin": Buffer.alloc(3000, 0), "b.bin": Buffer.alloc(3000, 0), "notes.md": "x".repeat(9000) });
  const over = run(dir, "--max-file", "10000", "--max-binary", "5000");
  assert.equal(over.status, 1);
  assert.match(over.stderr, /tracked binary files: .* over the budget/);
  assert.equal(run(dir, "--max-file", "10000", "--max-binary", "6000").status, 0);
});

test("untracked files do not count", () => {
  const dir = repo({ "small.txt": "hello\n" });
  writeFileSync(join(dir, "grid.png"), Buffer.alloc(100000, 0));
  const r = run(dir, "--max-file", "1000", "--max-binary", "1000");
  assert.equal(r.status, 0, r.stderr);
});

test("binary means a NUL byte or bytes that are not UTF-8", () => {
  assert.equal(isBinary(Buffer.from("plain text, ünïcode\n")), false);
  assert.equal(isBinary(Buffer.from([0x41, 0x00, 0x42])), true);
  assert.equal(isBinary(Buffer.from([0xff, 0xfe, 0x41])), true);
});
