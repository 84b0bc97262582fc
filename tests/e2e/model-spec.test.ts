import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ModelSpec } from "@imagegen/contracts/models";
import { modelSpecFromManifest } from "@imagegen/edge/models";
import { importExport } from "@imagegen/gpu-runner/import";
import { afterAll, describe, expect, it } from "vitest";

// An imported Stable Diffusion export registers like any bundle: the edge's own mapping from its manifest (as
// infra/local/start.mjs registers every bundle it serves) gives the samplers and steps /v1/models shows.
const FIXTURES = join(import.meta.dirname, "..", "..", "gpu-runner", "test", "fixtures", "sd");
const tmp = mkdtempSync(join(tmpdir(), "model-spec-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe("an imported model's spec", () => {
  it("turbo: samplers and steps from its manifest", async () => {
    const { manifest } = await importExport(join(FIXTURES, "turbo"), { out: tmp });
    const spec = ModelSpec.parse(modelSpecFromManifest(manifest));
    expect(spec.default_sampler).toBe("euler");
    expect(spec.samplers.euler).toMatchObject({ default_steps: 1, max_guidance: 1 });
    expect(Object.keys(spec.samplers)).toEqual(["euler", "euler-a", "dpm++2m", "dpm++2m-karras", "lcm"]);
  });
});
