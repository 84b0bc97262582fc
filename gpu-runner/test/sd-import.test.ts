/**
 * Importing Optimum Stable Diffusion exports: what each fixture family is recognised as, that the export folder is
 * left untouched, and that a broken export is refused with its reasons and leaves nothing registered.
 */
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { cpSync, existsSync, lstatSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { promisify } from "node:util";
import { afterAll, describe, expect, it } from "vitest";
import { ImportError, importExport, type ImportOptions } from "../src/import/index.ts";
import { loadBundle } from "../src/pipeline/bundle.ts";
import { discoverModels } from "../src/runner/runner.ts";

const FIXTURES = join(import.meta.dirname, "fixtures", "sd");
const tmp = mkdtempSync(join(tmpdir(), "sd-import-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
let n = 0;
const freshDir = (label: string) => join(tmp, `${label}-${n++}`);

/** Every file of a folder with its sha256, to show an import wrote nothing there. */
function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out[relative(dir, p)] = createHash("sha256").update(readFileSync(p)).digest("hex");
    }
  };
  walk(dir);
  return out;
}

/** A copy of a fixture's export (without its LoRAs and references), for breaking. */
function copyExport(family: string): string {
  const dst = freshDir(`export-${family}`);
  cpSync(join(FIXTURES, family), dst, { recursive: true, filter: (src) => !/\/(loras|reference)$/.test(src) });
  return dst;
}

async function refusal(
  exportDir: string,
  options: Partial<ImportOptions> = {},
): Promise<{ problems: string; out: string }> {
  const out = freshDir("models");
  const err = await importExport(exportDir, { out, name: "broken", ...options }).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ImportError);
  // Nothing half-registered: no bundle, no temporary folder.
  expect(existsSync(out) ? readdirSync(out) : []).toEqual([]);
  return { problems: (err as ImportError).problems.join("\n"), out };
}

const editJson = (path: string, edit: (j: Record<string, unknown>) => void) => {
  const j = JSON.parse(readFileSync(path, "utf8")) as Record<string, unknown>;
  edit(j);
  writeFileSync(path, JSON.stringify(j));
};

describe("importExport recognises each family from the export alone", () => {
  it("sd15: SD 1.x epsilon, last_hidden_state, PNDM config run as DPM-Solver++, export untouched and linked", async () => {
    const before = snapshot(join(FIXTURES, "sd15"));
    const out = freshDir("models");
    const { dir, manifest, recognised } = await importExport(join(FIXTURES, "sd15"), { out });
    expect(snapshot(join(FIXTURES, "sd15"))).toEqual(before);
    expect(recognised).toBe("SD 1.x, epsilon, fp32");
    expect(lstatSync(join(dir, "export")).isSymbolicLink()).toBe(true);
    expect(manifest).toMatchObject({
      name: "sd15",
      family: "sd1",
      prediction_type: "epsilon",
      default_sampler: "dpm++2m",
      // lcm: for LCM-LoRA, as diffusers' LCMScheduler.from_config(pipe.scheduler.config).
      samplers: ["euler", "euler-a", "dpm++2m", "dpm++2m-karras", "ddim", "lcm"],
      guidance: { cfg: true, default_scale: 7.5 },
      latent: { channels: 4, downsample: 8, scaling_factor: 0.18215 },
      image: { width: 64, height: 64, multiple_of: 16 },
      tokenizer: { type: "clip", path: "export/tokenizer", max_length: 77, bos_id: 847, eos_id: 848, pad_id: 848 },
      text_conditioning: { hidden_states: ["last_hidden_state"] },
      scheduler_config: { _class_name: "PNDMScheduler", steps_offset: 1 },
    });
    expect(manifest.components.unet).toMatchObject({
      path: "export/unet/model.onnx",
      inputs: [
        { name: "sample", dtype: "float32", shape: ["batch_size", 4, "height", "width"] },
        { name: "timestep", dtype: "float32", shape: [] },
        { name: "encoder_hidden_states", dtype: "float32", shape: ["batch_size", "sequence_length", 32] },
      ],
    });
    expect(manifest.components.vae_encoder?.path).toBe("export/vae_encoder/model.onnx");
    // The runner finds it and loads it like any bundle.
    expect([...discoverModels(out).keys()]).toEqual(["sd15"]);
    const bundle = await loadBundle(dir);
    expect(bundle.tokenizer.kind).toBe("clip");
    await bundle.release();
  });

  it("sd2v: SD 2.x v-prediction", async () => {
    const { manifest } = await importExport(join(FIXTURES, "sd2v"), { out: freshDir("models") });
    expect(manifest).toMatchObject({
      family: "sd2",
      prediction_type: "v_prediction",
      default_sampler: "ddim",
      tokenizer: { pad_id: 0 },
    });
  });

  it("lcm: timestep_cond as diffusers' guidance-scale embedding, LCM only, no CFG", async () => {
    const { manifest, recognised } = await importExport(join(FIXTURES, "lcm"), { out: freshDir("models") });
    expect(recognised).toBe("SD 1.x, LCM-distilled (timestep_cond), epsilon, fp32");
    expect(manifest).toMatchObject({
      samplers: ["lcm"],
      default_sampler: "lcm",
      default_steps: 4,
      guidance: {
        cfg: false,
        default_scale: 8.5,
        embedding: { input: "timestep_cond", dim: 32, w_scale: 1000, freq_shift: 1 },
      },
      scheduler: { original_inference_steps: 50, timestep_scaling: 10 },
    });
  });

  it("sdxl: two encoders' penultimate states, pooled text_embeds, time_ids, ×0.13025", async () => {
    const { manifest } = await importExport(join(FIXTURES, "sdxl"), { out: freshDir("models") });
    expect(manifest).toMatchObject({
      family: "sdxl",
      latent: { scaling_factor: 0.13025 },
      guidance: { cfg: true, default_scale: 5 },
      tokenizer_2: { path: "export/tokenizer_2", pad_id: 0 },
      text_conditioning: {
        hidden_states: ["hidden_states.1", "hidden_states.2"],
        pooled: { component: "text_encoder_2", output: "text_embeds", unet_input: "text_embeds" },
        time_ids: { unet_input: "time_ids" },
        zero_empty_negative: true,
      },
    });
    // diffusers' DDIM would clip samples under an Euler config without clip_sample: not offered.
    expect(manifest.samplers).not.toContain("ddim");
  });

  it("turbo: fp16 graphs with external data, no CFG from its name, and --no-cfg / defaults as options", async () => {
    const { dir, manifest, recognised } = await importExport(join(FIXTURES, "turbo"), { out: freshDir("models") });
    expect(recognised).toBe("SD 2.x, few-step, no CFG, epsilon, fp16");
    expect(manifest.guidance).toEqual({ cfg: false, default_scale: 0 });
    expect(manifest.default_steps).toBe(1);
    expect(manifest.components.unet.inputs.map((t) => t.dtype)).toEqual(["float16", "float16", "float16"]);
    await (await loadBundle(dir)).release();
    const forced = await importExport(join(FIXTURES, "sd15"), {
      out: freshDir("models"),
      noCfg: true,
      defaultSteps: 2,
      defaultSampler: "euler",
    });
    expect(forced.manifest).toMatchObject({
      guidance: { cfg: false, default_scale: 0 },
      default_steps: 2,
      default_sampler: "euler",
    });
  });

  it("copies the export into the bundle when asked, and replaces a bundle only with force", async () => {
    const out = freshDir("models");
    const { dir } = await importExport(join(FIXTURES, "sd15"), { out, name: "mine", copy: true });
    expect(lstatSync(join(dir, "export")).isDirectory()).toBe(true);
    expect(existsSync(join(dir, "export", "unet", "model.onnx"))).toBe(true);
    const again = await importExport(join(FIXTURES, "sd15"), { out, name: "mine" }).catch((e: ImportError) => e);
    expect((again as ImportError).problems.join()).toMatch(/already exists \(pass --force/);
    await importExport(join(FIXTURES, "sd2v"), { out, name: "mine", force: true });
    expect(JSON.parse(readFileSync(join(out, "mine", "manifest.json"), "utf8")).prediction_type).toBe("v_prediction");
    expect(readdirSync(out)).toEqual(["mine"]);
  });
});

describe("importExport's LoRA modes", () => {
  it("merge (default) names each layer's weight; branch writes rewritten graphs into the bundle, external data linked; none takes no LoRAs", async () => {
    const merged = await importExport(join(FIXTURES, "sd15"), { out: freshDir("models") });
    expect(merged.manifest.lora?.mode).toBe("merge");
    expect(merged.manifest.lora!.targets.every((t) => t.weight && t.down_input === undefined)).toBe(true);
    expect(new Set(merged.manifest.lora!.targets.flatMap((t) => t.components))).toEqual(
      new Set(["text_encoder", "unet"]),
    );

    const before = snapshot(join(FIXTURES, "turbo"));
    const { dir, manifest } = await importExport(join(FIXTURES, "turbo"), { out: freshDir("models"), lora: "branch" });
    expect(snapshot(join(FIXTURES, "turbo"))).toEqual(before);
    expect(manifest.lora?.mode).toBe("branch");
    for (const part of ["text_encoder", "unet"] as const) {
      const spec = manifest.components[part];
      expect(spec.path).toBe(`${part}/model.onnx`);
      expect(spec.inputs.some((t) => t.name.startsWith("lora.") && t.shape[0] === "batch")).toBe(true);
      // The fp16 export's weights stay where they are: model.onnx_data is a hard link (or copy) beside the new graph.
      expect(lstatSync(join(dir, part, "model.onnx_data")).isFile()).toBe(true);
      expect(readFileSync(join(dir, part, "model.onnx_data"))).toEqual(
        readFileSync(join(FIXTURES, "turbo", part, "model.onnx_data")),
      );
    }
    expect(manifest.components.vae_decoder.path).toBe("export/vae_decoder/model.onnx");
    await (await loadBundle(dir)).release();

    const none = await importExport(join(FIXTURES, "sd15"), { out: freshDir("models"), lora: "none" });
    expect(none.manifest.lora).toBeUndefined();
  });
});

describe("importExport refuses a broken export and says why", () => {
  it("a missing part (every one named)", async () => {
    const src = copyExport("sdxl");
    rmSync(join(src, "unet", "model.onnx"));
    rmSync(join(src, "tokenizer_2", "merges.txt"));
    rmSync(join(src, "scheduler"), { recursive: true });
    const { problems } = await refusal(src);
    expect(problems).toMatch(/unet\/model\.onnx is missing/);
    expect(problems).toMatch(/tokenizer_2\/merges\.txt is missing/);
    expect(problems).toMatch(/scheduler\/scheduler_config\.json is missing/);
  });

  it("a folder that is not a diffusers export, or a pipeline it does not serve", async () => {
    expect((await refusal(join(FIXTURES, "sd15", "unet"))).problems).toMatch(/model_index\.json is missing/);
    const src = copyExport("sd15");
    editJson(join(src, "model_index.json"), (j) => (j._class_name = "StableDiffusionUpscalePipeline"));
    expect((await refusal(src)).problems).toMatch(/pipeline StableDiffusionUpscalePipeline is not supported/);
  });

  it("external data that is missing", async () => {
    const src = copyExport("turbo");
    rmSync(join(src, "unet", "model.onnx_data"));
    expect((await refusal(src)).problems).toMatch(/unet: ONNX Runtime cannot load it/);
  });

  it("graphs whose inputs or outputs are not what the configs imply", async () => {
    const lcmConfig = copyExport("sd15");
    editJson(join(lcmConfig, "unet", "config.json"), (j) => (j.time_cond_proj_dim = 32));
    expect((await refusal(lcmConfig)).problems).toMatch(
      /unet graph has no input "timestep_cond", which its config implies/,
    );

    const width = copyExport("sd15");
    rmSync(join(width, "text_encoder"), { recursive: true });
    cpSync(join(FIXTURES, "sd2v", "text_encoder"), join(width, "text_encoder"), { recursive: true });
    expect((await refusal(width)).problems).toMatch(
      /text width 48 = 48 does not match the unet's encoder_hidden_states 32/,
    );

    const latents = copyExport("sd15");
    editJson(join(latents, "vae_decoder", "config.json"), (j) => (j.latent_channels = 16));
    expect((await refusal(latents)).problems).toMatch(
      /latent channels disagree: .*vae_decoder\/config\.json latent_channels 16/,
    );

    const layers = copyExport("sdxl");
    editJson(join(layers, "text_encoder_2", "config.json"), (j) => (j.num_hidden_layers = 9));
    expect((await refusal(layers)).problems).toMatch(/text_encoder_2 graph has no output "hidden_states\.8"/);
  });

  it("a scheduler class or prediction type it cannot sample", async () => {
    const src = copyExport("sd15");
    editJson(join(src, "scheduler", "scheduler_config.json"), (j) => {
      j._class_name = "FlowMatchEulerDiscreteScheduler";
      j.prediction_type = "sample";
    });
    const { problems } = await refusal(src);
    expect(problems).toMatch(/scheduler class FlowMatchEulerDiscreteScheduler is not supported/);
    expect(problems).toMatch(/prediction_type "sample" is not supported/);
  });

  it("a tokenizer that does not load", async () => {
    const src = copyExport("sd15");
    editJson(join(src, "tokenizer", "vocab.json"), (j) => delete j["<|endoftext|>"]);
    expect((await refusal(src)).problems).toMatch(/tokenizer does not load as a CLIP tokenizer: .*eos_token/);
  });

  it("a name the API cannot take", async () => {
    expect((await refusal(join(FIXTURES, "sd15"), { name: "My Model" })).problems).toMatch(
      /model name "My Model" must be lowercase/,
    );
  });
});

describe("npm run models -- import", () => {
  const cli = (args: string[]) =>
    promisify(execFile)(process.execPath, [join(import.meta.dirname, "..", "src", "import", "cli.ts"), ...args]).then(
      (r) => ({ code: 0, ...r }),
      (e: { code: number; stdout: string; stderr: string }) => e,
    );

  it("prints the bundle folder and what it recognised; exits 1 with the reasons on a broken export", async () => {
    const out = freshDir("models");
    const ok = await cli(["import", join(FIXTURES, "lcm"), "--name", "my-lcm", "--out", out]);
    expect(ok.code).toBe(0);
    expect(ok.stdout.trim()).toBe(join(out, "my-lcm"));
    expect(ok.stderr).toMatch(/imported my-lcm: SD 1\.x, LCM-distilled/);
    const bad = await cli(["import", join(FIXTURES, "sd15", "unet"), "--out", out]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/cannot import .*model_index\.json is missing/s);
    expect((await cli(["import"])).code).toBe(2);
  });
});
