import { spawn } from "node:child_process";
import { resolve } from "node:path";
import { expect, it } from "vitest";
import { schemathesisBinary } from "../schemathesis/run-support.ts";

const root = resolve(import.meta.dirname, "../..");

// A short schemathesis run (tests/schemathesis/run.ts) against the local stack: no 5xx, every response as the
// committed OpenAPI document says. Not skipped when schemathesis is missing: .ci/run installs it.
it("the public API answers schemathesis' requests without a 5xx and as its OpenAPI document says", async () => {
  expect(
    schemathesisBinary(),
    "schemathesis is not installed (pip install schemathesis; .ci/run puts it in .ci/.venv)",
  ).toBeDefined();
  const child = spawn(
    process.execPath,
    [resolve(root, "tests/schemathesis/run.ts"), "--max-examples", "3", "--max-time", "60", "--no-report"],
    {
      cwd: root,
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  let output = "";
  child.stdout.on("data", (d) => (output += d));
  child.stderr.on("data", (d) => (output += d));
  const code = await new Promise<number | null>((r) => child.on("close", r));
  expect(code, output.slice(-6000)).toBe(0);
}, 480_000);
