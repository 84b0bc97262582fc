import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { BundleError, ExecutionProviderError, loadBundle, readManifest } from "../src/pipeline/bundle.ts";
import { buildModel } from "../src/onnx/builder.ts";
import { TOY_GRAPHS, writeToyBundle } from "./fixtures/toy-bundle.ts";

const dirs: string[] = [];
const toy = (...args: Parameters<typeof writeToyBundle>) => {
  const dir = writeToyBundle(...args);
  dirs.push(dir);
  return dir;
};
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

/** The loader's error for a bundle, for matching its message. */
async function loadError(dir: string): Promise<BundleError> {
  try {
    const bundle = await loadBundle(dir);
    await bundle.release();
  } catch (err) {
    expect(err).toBeInstanceOf(BundleError);
    return err as BundleError;
  }
  throw new Error("bundle loaded but should have been refused");
}

describe("loadBundle", () => {
  it("loads an honest bundle and reads what the sessions take", async () => {
    const bundle = await loadBundle(toy());
    expect(Object.keys(bundle.components).sort()).toEqual([
      "text_encoder",
      "unet",
      "unet_deep",
      "unet_head",
      "unet_tail",
      "vae_decoder",
    ]);
    expect(bundle.components.unet.session.inputNames).toContain("mid_block_additional_residual");
    expect(bundle.tokenizer.encode("a red circle").ids.slice(0, 5)).toEqual([2, 4, 5, 7, 3]);
    await bundle.release();
  });

  it("refuses a folder without manifest.json", async () => {
    const dir = toy();
    rmSync(join(dir, "manifest.json"));
    expect((await loadError(dir)).message).toMatch(/manifest\.json not found/);
  });

  it("refuses a manifest that is not JSON or breaks the contract, naming the field", async () => {
    const dir = toy();
    writeFileSync(join(dir, "manifest.json"), "{ not json");
    expect((await loadError(dir)).message).toMatch(/manifest\.json is not valid JSON/);
    const wrongType = toy((m) => Object.assign(m, { prediction_type: "x0" }));
    expect((await loadError(wrongType)).message).toMatch(/manifest\.prediction_type:/);
    const unknownKey = toy((m) => Object.assign(m.latent, { scale: 1 }));
    expect(() => readManifest(unknownKey)).toThrow(/manifest\.latent: .*scale/);
  });

  it("refuses a missing ONNX file or vocabulary, naming it", async () => {
    const dir = toy();
    rmSync(join(dir, "unet_deep", "model.onnx"));
    rmSync(join(dir, "tokenizer", "vocab.json"));
    const err = await loadError(dir);
    expect(err.problems).toContain("components.unet_deep: file unet_deep/model.onnx not found");
    expect(err.message).toMatch(/tokenizer\.vocab: tokenizer\/vocab\.json not found/);
  });

  it("refuses a file that is not ONNX", async () => {
    const dir = toy();
    writeFileSync(join(dir, "vae_decoder", "model.onnx"), "garbage");
    expect((await loadError(dir)).message).toMatch(
      /components\.vae_decoder: ONNX Runtime cannot load vae_decoder\/model\.onnx/,
    );
  });

  it("names every tensor the manifest lies about: name, dtype, rank, fixed axis, undeclared input", async () => {
    const dir = toy((m) => {
      m.components.unet.inputs[0]!.name = "latents"; // graph calls it "sample"
      m.components.text_encoder.inputs[0]!.dtype = "int32"; // graph takes int64
      m.components.vae_decoder.outputs[0]!.shape = ["batch", 3, 16]; // graph has rank 4
      m.components.unet_tail!.outputs[0]!.shape[2] = 9; // graph fixes 8
    });
    const { problems } = await loadError(dir);
    expect(problems).toEqual(
      expect.arrayContaining([
        expect.stringMatching(
          /components\.unet input "latents" is declared but the graph has no such tensor \(graph has: sample/,
        ),
        'components.unet input "sample" exists in the graph but is not declared in the manifest',
        'components.text_encoder input "input_ids": declared int32, graph has int64',
        expect.stringMatching(/components\.vae_decoder output "sample": declared rank 3 .*graph has rank 4/),
        'components.unet_tail output "out_sample": axis 2 declared 9, graph fixes it to 8',
      ]),
    );
  });

  it("refuses a manifest whose cross-references point nowhere", async () => {
    const dir = toy((m) => {
      m.cache!.cached_feature = "nope";
      m.controlnet!.residuals.push("down_block_9_additional_residual");
      m.default_sampler = "rectified-flow";
    });
    const { problems } = await loadError(dir);
    expect(problems).toEqual(
      expect.arrayContaining([
        'cache.cached_feature "nope" is not an output of components.unet_deep',
        'controlnet.residuals: "down_block_9_additional_residual" is not an input of components.unet',
        'default_sampler "rectified-flow" is not among samplers [ddim, lcm]',
      ]),
    );
  });

  it("checks sha256 when the manifest declares one", async () => {
    const dir = toy((m) => {
      m.components.vae_decoder.sha256 = "0".repeat(64);
    });
    expect((await loadError(dir)).message).toMatch(/vae_decoder\/model\.onnx does not match its sha256/);
  });

  it("names a missing execution provider as such, not as a broken bundle", async () => {
    // CUDA is absent on the CPU machines and present in the GPU image: either it loads or the error says why.
    try {
      const bundle = await loadBundle(toy(), { executionProviders: ["cuda"], intraOpNumThreads: 1 });
      await bundle.release();
    } catch (err) {
      expect(err).toBeInstanceOf(ExecutionProviderError);
      expect((err as Error).message).toMatch(/execution providers \[cuda\] are not available here/);
    }
  });

  it("catches a graph that fixes the batch axis the manifest declares dynamic", async () => {
    const dir = toy();
    const g = TOY_GRAPHS.vae_decoder!;
    const fixed = { ...g, inputs: [{ ...g.inputs[0]!, shape: [1, 4, 8, 8] }] };
    writeFileSync(join(dir, "vae_decoder", "model.onnx"), buildModel(fixed));
    expect((await loadError(dir)).problems).toContain(
      'components.vae_decoder input "latent_sample": axis 0 declared "batch", graph fixes it to 1',
    );
  });
});
