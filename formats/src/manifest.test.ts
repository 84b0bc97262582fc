import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { BundleManifest, bundleManifestJsonSchema, ControlNetManifest, controlNetMismatches } from "./manifest.ts";

const tensor = (name: string) => ({ name, dtype: "float32" as const, shape: ["batch", 8, 8, 8] });
const controlnet = ControlNetManifest.parse({
  schema_version: 1,
  kind: "controlnet",
  name: "mask",
  family: "tiny",
  version: "1",
  conditioning: { type: "mask", width: 64, height: 64, channels: 1, range: [0, 1] },
  components: {
    controlnet: { path: "controlnet/model.onnx", inputs: [tensor("cond")], outputs: [tensor("down_0"), tensor("mid")] },
  },
  residuals: { down_0: "down_block_res_0", mid: "mid_block_res" },
});

describe("bundle manifest", () => {
  it("the committed JSON Schema is the one the zod schema generates (run `npm run schema -w formats`)", () => {
    const committed = JSON.parse(readFileSync(new URL("../manifest.schema.json", import.meta.url), "utf8"));
    expect(committed).toEqual(bundleManifestJsonSchema());
  });

  it("tells a ControlNet manifest by its kind and refuses fields the contract does not name", () => {
    expect(BundleManifest.parse(controlnet).kind).toBe("controlnet");
    expect(BundleManifest.safeParse({ ...controlnet, kind: "lora" }).success).toBe(false);
    expect(BundleManifest.safeParse({ ...controlnet, extra: 1 }).success).toBe(false);
  });

  it("names every reason a ControlNet cannot feed a model", () => {
    const model = { name: "tiny-1", family: "tiny", residuals: ["down_block_res_0", "mid_block_res"] };
    expect(controlNetMismatches(controlnet, model)).toEqual([]);
    const wrong = { ...controlnet, residuals: { down_0: "down_block_res_9", up_0: "mid_block_res" } };
    expect(controlNetMismatches(wrong, { ...model, family: "other" })).toEqual([
      'family "tiny" does not match the model\'s "other"',
      'residual "down_block_res_9" (from output "down_0") is not a residual input of tiny-1',
      'residuals maps output "up_0", which components.controlnet.outputs does not declare',
    ]);
    // Without the model's residual list only the ControlNet's own consistency is checked.
    expect(controlNetMismatches(wrong, { name: "tiny-1", family: "tiny" })).toEqual([
      'residuals maps output "up_0", which components.controlnet.outputs does not declare',
    ]);
  });
});
