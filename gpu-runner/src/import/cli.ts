#!/usr/bin/env node
/**
 * `npm run models -- import <export dir> [options]`: turns an Optimum Stable Diffusion export into a model bundle
 * the runner serves (see README.md, "Importing a Stable Diffusion export").
 */
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { SamplerName } from "@imagegen/formats/manifest";
import { DEFAULT_LORA_MODE, ImportError, importExport, type LoraImportMode } from "./index.ts";

/** Where `npm start` looks for imported bundles besides gpu-runner/models (ignored by git). */
const DEFAULT_IMPORT_DIR = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", ".state", "models");

const USAGE = `usage: npm run models -- import <export dir> [options]
  --name <name>        model name (default: the folder's name, lowercased)
  --out <models dir>   where the bundle goes: <models dir>/<name>/ (default .state/models, which npm start serves)
  --copy               copy the export into the bundle (default: link to it; the export is never modified)
  --force              replace a bundle of the same name
  --no-cfg             a few-step model distilled without classifier-free guidance: guidance 0, 1 step
                       (automatic when model_index.json's _name_or_path says "turbo")
  --steps <n>          default steps
  --guidance <w>       default guidance scale
  --sampler <name>     default sampler (${SamplerName.options.join(", ")})
  --family <name>      add-on family (default sd1, sd2 or sdxl, from the text encoder)
  --lora <mode>        branch: graphs rewritten with LoRA branch inputs, sets switch per request;
                       merge: a merged session per LoRA set; none: no LoRAs (default ${DEFAULT_LORA_MODE})`;
const LORA_MODES: readonly LoraImportMode[] = ["branch", "merge", "none"];

function fail(message: string, code: number): never {
  process.stderr.write(`${message}\n`);
  process.exit(code);
}

async function main(): Promise<void> {
  let parsed;
  try {
    parsed = parseArgs({
      allowPositionals: true,
      options: {
        name: { type: "string" },
        out: { type: "string" },
        copy: { type: "boolean", default: false },
        force: { type: "boolean", default: false },
        "no-cfg": { type: "boolean", default: false },
        steps: { type: "string" },
        guidance: { type: "string" },
        sampler: { type: "string" },
        family: { type: "string" },
        lora: { type: "string" },
        help: { type: "boolean", short: "h", default: false },
      },
    });
  } catch (err) {
    fail(`${(err as Error).message}\n${USAGE}`, 2);
  }
  const { values, positionals } = parsed;
  if (values.help) fail(USAGE, 0);
  if (positionals[0] !== "import" || positionals.length !== 2) fail(USAGE, 2);
  const number = (flag: string, v: string | undefined, ok: (x: number) => boolean) => {
    if (v === undefined) return undefined;
    const x = Number(v);
    if (!ok(x)) fail(`--${flag}: "${v}" is not allowed\n${USAGE}`, 2);
    return x;
  };
  const sampler = values.sampler === undefined ? undefined : SamplerName.safeParse(values.sampler);
  if (sampler && !sampler.success) fail(`--sampler must be one of ${SamplerName.options.join(", ")}`, 2);
  if (values.lora !== undefined && !LORA_MODES.includes(values.lora as LoraImportMode))
    fail(`--lora must be one of ${LORA_MODES.join(", ")}`, 2);
  // npm runs workspace scripts in the workspace folder; paths are the caller's.
  const cwd = process.env.INIT_CWD ?? process.cwd();
  const steps = number("steps", values.steps, (x) => Number.isInteger(x) && x > 0);
  const guidance = number("guidance", values.guidance, (x) => x >= 0);
  try {
    const { dir, manifest, recognised } = await importExport(resolve(cwd, positionals[1]!), {
      out: values.out === undefined ? DEFAULT_IMPORT_DIR : resolve(cwd, values.out),
      ...(values.name !== undefined ? { name: values.name } : {}),
      copy: values.copy,
      force: values.force,
      ...(values["no-cfg"] ? { noCfg: true } : {}),
      ...(steps !== undefined ? { defaultSteps: steps } : {}),
      ...(guidance !== undefined ? { defaultGuidance: guidance } : {}),
      ...(sampler?.data !== undefined ? { defaultSampler: sampler.data } : {}),
      ...(values.family !== undefined ? { family: values.family } : {}),
      ...(values.lora !== undefined ? { lora: values.lora as LoraImportMode } : {}),
    });
    process.stderr.write(
      `imported ${manifest.name}: ${recognised}\n` +
        `  samplers ${manifest.samplers.join(", ")} (default ${manifest.default_sampler}, ${manifest.default_steps} steps, guidance ${manifest.guidance.default_scale}${manifest.guidance.cfg ? ", CFG" : ""})\n` +
        `  LoRAs ${manifest.lora ? `${manifest.lora.mode}, ${manifest.lora.targets.length} layers` : "none"}\n` +
        `  size ${manifest.image.width}×${manifest.image.height} (${manifest.image.min_size}–${manifest.image.max_size}, multiples of ${manifest.image.multiple_of})\n`,
    );
    process.stdout.write(`${dir}\n`);
  } catch (err) {
    if (err instanceof ImportError) fail(err.message, 1);
    throw err;
  }
}

await main();
