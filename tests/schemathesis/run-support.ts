import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";

const root = resolve(import.meta.dirname, "../..");

/** schemathesis from SCHEMATHESIS (a path), else .ci/.venv/bin (where .ci/run installs it), else PATH. */
export function schemathesisBinary(): string | undefined {
  const candidates = [process.env.SCHEMATHESIS, join(root, ".ci/.venv/bin/schemathesis")].filter(
    (c): c is string => !!c,
  );
  const found = candidates.find((c) => existsSync(c));
  if (found) return found;
  return spawnSync("schemathesis", ["--version"], { stdio: "ignore" }).status === 0 ? "schemathesis" : undefined;
}
