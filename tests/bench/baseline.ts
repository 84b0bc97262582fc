/**
 * The latency bench's trees: copies of this one with the job path's files as they were before (a revision or a
 * folder), and optionally the runner pinned to a revision.
 */
import { execFileSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const root = resolve(import.meta.dirname, "../..");

/**
 * The files whose before/after the comparison is about: the edge, its database queries and the contracts between
 * them (issue 21, part 2). The runner is compared only when asked (`runnerRev`, `baselineRunnerRev` in latency.ts).
 */
const OVERHEAD_PATHS = ["edge/src", "db/src", "contracts/src"];

/** What a copy of the tree takes from elsewhere. */
export interface TreeOverlay {
  /** The job path's files (OVERHEAD_PATHS) as they were at this git revision… */
  jobPathRev?: string;
  /** …or as this folder holds them (paths it lacks stay as they are). */
  jobPathDir?: string;
  /**
   * gpu-runner/src as it was at this revision, in every stack of the run: the runner is the same on both sides and
   * does not change under a bench while others work on it.
   */
  runnerRev?: string;
}

const archive = (rev: string, path: string, out: string) =>
  execFileSync("sh", ["-c", `git archive ${rev} ${path} | tar -x -C ${out}`], { cwd: root });

/**
 * A copy of this tree to run a stack from (bundles and node_modules linked, workspace links into the copy), with the
 * overlay's files in place.
 */
export function copyTree(overlay: TreeOverlay): string {
  const out = mkdtempSync(join(tmpdir(), "imagegen-bench-tree-"));
  const files = execFileSync("git", ["ls-files", "-co", "--exclude-standard"], { cwd: root, encoding: "utf8" })
    .split("\n")
    .filter((f) => f && !f.startsWith("gpu-runner/models/") && !f.startsWith("gpu-runner/zoo/"));
  for (const f of files) {
    try {
      cpSync(join(root, f), join(out, f));
    } catch {
      // deleted in the working tree
    }
  }
  symlinkSync(join(root, "gpu-runner/models"), join(out, "gpu-runner/models"));
  // Build outputs git ignores but the packages' exports point at (the SDK's retry policy, which the runner imports).
  for (const built of ["sdk/dist"]) if (existsSync(join(root, built))) symlinkSync(join(root, built), join(out, built));
  for (const p of OVERHEAD_PATHS) {
    if (overlay.jobPathRev) {
      rmSync(join(out, p), { recursive: true, force: true });
      archive(overlay.jobPathRev, p, out);
    }
    if (overlay.jobPathDir && existsSync(join(overlay.jobPathDir, p)))
      cpSync(join(overlay.jobPathDir, p), join(out, p), { recursive: true, force: true });
  }
  if (overlay.runnerRev) {
    rmSync(join(out, "gpu-runner/src"), { recursive: true, force: true });
    archive(overlay.runnerRev, "gpu-runner/src", out);
  }
  mkdirSync(join(out, "node_modules/@imagegen"), { recursive: true });
  for (const entry of readdirSync(join(root, "node_modules"))) {
    if (entry !== "@imagegen") symlinkSync(join(root, "node_modules", entry), join(out, "node_modules", entry));
  }
  for (const pkg of readdirSync(join(root, "node_modules/@imagegen")))
    symlinkSync(`../../${pkg}`, join(out, "node_modules/@imagegen", pkg));
  for (const ws of ["contracts", "edge", "formats", "gpu-runner", "sdk", "tests", "db"]) {
    try {
      symlinkSync(join(root, ws, "node_modules"), join(out, ws, "node_modules"));
    } catch {
      // no node_modules of its own
    }
  }
  return out;
}
