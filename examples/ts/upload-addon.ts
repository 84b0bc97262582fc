/**
 * Uploads a LoRA with progress, then draws with it. The file is the first argument, else a LoRA that ships with
 * the model's bundle (gpu-runner/models/<family>/addons/).
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { client, model, repoRoot } from "./client.ts";

const m = await model();
const bundled = join(repoRoot, "gpu-runner/models", m.family, "addons");
const path =
  process.argv[2] ??
  (existsSync(bundled)
    ? readdirSync(bundled)
        .filter((f) => f.endsWith(".safetensors"))
        .map((f) => join(bundled, f))[0]
    : undefined);
if (!path) throw new Error("usage: node examples/ts/upload-addon.ts <lora.safetensors>");
const { addon, version } = await client.addons.upload(
  readFileSync(path),
  { kind: "lora", name: `example-${Date.now()}`, family: m.family },
  { onProgress: ({ loaded, total }) => process.stderr.write(`uploaded ${Math.round((100 * loaded) / total)}%\n`) },
);
if (version.status !== "ready") throw new Error(`the add-on was rejected: ${version.rejection_reason}`);
const g = await client.generations.createAndWait({
  model: m.id,
  prompt: "a green triangle in the middle",
  loras: [{ id: addon.id, scale: 1 }],
});
console.log(
  JSON.stringify({
    addon: addon.id,
    version: version.version,
    status: version.status,
    generation: g.id,
    url: g.images[0]?.url,
  }),
);
