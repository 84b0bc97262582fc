import { describe, expect, it } from "vitest";
import { mapLoraKeys, kohyaPrefix, kohyaPrefixes } from "./lora-keys.ts";

describe("LoRA keys onto the model's targets", () => {
  const t = { module: "down_blocks.1.attentions.0.to_q", in_features: 8, out_features: 6 };
  const info = (name: string, shape: number[]) => ({ name, dtype: "F32" as const, shape, begin: 0, end: 0 });
  const k = kohyaPrefix(t.module);

  it("converts the model's module names, never parsing underscores back", () => {
    // "down_blocks" has an underscore of its own: a parser splitting on "_" would get the path wrong.
    const m = mapLoraKeys(
      [info(`${k}.lora_down.weight`, [4, 8]), info(`${k}.lora_up.weight`, [6, 4]), info(`${k}.alpha`, [])],
      [t],
      16,
    );
    expect(m.errors).toEqual([]);
    expect(m.layers[0]).toMatchObject({ module: t.module, rank: 4, alphaKey: `${k}.alpha` });
    const peft = mapLoraKeys(
      [info(`unet.${t.module}.lora_A.weight`, [2, 8]), info(`unet.${t.module}.lora_B.weight`, [6, 2])],
      [t],
      16,
    );
    expect(peft.layers[0]).toMatchObject({ module: t.module, rank: 2, convention: "peft" });
  });

  it("maps LoCon keys onto 3×3 convolution targets and refuses kernels that do not fit", () => {
    const c = { module: "down_blocks.0.res.conv1", kind: "conv3x3" as const, in_features: 8, out_features: 6 };
    const kc = kohyaPrefix(c.module);
    const locon = mapLoraKeys(
      [
        info(`${kc}.lora_down.weight`, [4, 8, 3, 3]),
        info(`${kc}.lora_up.weight`, [6, 4, 1, 1]),
        info(`${kc}.alpha`, []),
      ],
      [c],
      16,
    );
    expect(locon.errors).toEqual([]);
    expect(locon.layers[0]).toMatchObject({ module: c.module, rank: 4, inFeatures: 8, outFeatures: 6 });
    const peft = mapLoraKeys(
      [info(`unet.${c.module}.lora_A.weight`, [2, 8, 3, 3]), info(`unet.${c.module}.lora_B.weight`, [6, 2, 1, 1])],
      [c],
      16,
    );
    expect(peft.layers[0]).toMatchObject({ rank: 2, inFeatures: 8, convention: "peft" });
    // A plain matrix for a convolution, or a 3×3 kernel for a linear layer, is refused with the shape it needs.
    const flat = mapLoraKeys([info(`${kc}.lora_down.weight`, [4, 8]), info(`${kc}.lora_up.weight`, [6, 4])], [c], 16);
    expect(flat.errors.join("\n")).toContain(
      "expected [rank, 8, 3, 3] (module 'down_blocks.0.res.conv1' is a 3×3 convolution)",
    );
    const kernelOnLinear = mapLoraKeys(
      [info(`${k}.lora_down.weight`, [4, 8, 3, 3]), info(`${k}.lora_up.weight`, [6, 4])],
      [t],
      16,
    );
    expect(kernelOnLinear.errors.join("\n")).toContain("expected [rank, 8]");
    const wrongKernel = mapLoraKeys(
      [info(`${kc}.lora_down.weight`, [4, 8, 5, 5]), info(`${kc}.lora_up.weight`, [6, 4, 1, 1])],
      [c],
      16,
    );
    expect(wrongKernel.errors).toHaveLength(1);
  });

  it("names every key that cannot be used", () => {
    const bad = mapLoraKeys(
      [
        info("lora_unet_no_such_layer.lora_down.weight", [4, 8]),
        info("lora_te_text_model_encoder.lora_down.weight", [4, 8]),
        info(`${k}.lora_down.weight`, [32, 8]),
        info(`${k}.lora_up.weight`, [7, 32]),
        info("model.weight", [3]),
      ],
      [t],
      16,
    );
    const text = bad.errors.join("\n");
    expect(text).toContain("'lora_unet_no_such_layer.lora_down.weight' matches no LoRA target");
    expect(text).toContain("adapts the text encoder");
    expect(text).toContain("rank 32, above this model's maximum of 16");
    expect(text).toContain("has 7 output features");
    expect(text).toContain("'model.weight' is neither");
    const half = mapLoraKeys([info(`${k}.lora_down.weight`, [4, 8])], [t], 16);
    expect(half.errors[0]).toMatch(/no up weight/);
  });

  describe("imported models: text encoders, SDXL's two, older spellings, partial files", () => {
    const te = { module: "text_encoder.text_model.encoder.layers.0.self_attn.q_proj", in_features: 8, out_features: 8 };
    const te2 = {
      module: "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj",
      in_features: 8,
      out_features: 8,
    };
    const pair = (prefix: string) => [
      info(`${prefix}.lora_down.weight`, [2, 8]),
      info(`${prefix}.lora_up.weight`, [8, 2]),
    ];

    it("maps lora_te_ / lora_te1_ to the first encoder, lora_te2_ to SDXL's second, and PEFT text_encoder. keys", () => {
      expect(kohyaPrefixes(te.module)).toEqual([
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
      ]);
      const sdxl = mapLoraKeys(
        [
          ...pair("lora_te1_text_model_encoder_layers_0_self_attn_q_proj"),
          ...pair("lora_te2_text_model_encoder_layers_0_self_attn_q_proj"),
        ],
        [te, te2],
        16,
      );
      expect(sdxl.errors).toEqual([]);
      expect(sdxl.layers.map((l) => l.module).sort()).toEqual([te.module, te2.module]);
      const peft = mapLoraKeys(
        [info(`${te.module}.lora_A.weight`, [2, 8]), info(`${te.module}.lora_B.weight`, [8, 2])],
        [te],
        16,
      );
      expect(peft.layers[0]).toMatchObject({ module: te.module, convention: "peft" });
      // diffusers' older `lora.down` / `lora.up` spelling.
      const old = mapLoraKeys(
        [info(`unet.${t.module}.lora.down.weight`, [2, 8]), info(`unet.${t.module}.lora.up.weight`, [6, 2])],
        [t],
        16,
      );
      expect(old.layers[0]).toMatchObject({ module: t.module, rank: 2 });
    });

    it("refuses SDXL's te1/te2 keys on a one-encoder model and LDM-named keys, naming them", () => {
      const m = mapLoraKeys(
        [
          ...pair("lora_te2_text_model_encoder_layers_0_self_attn_q_proj"),
          ...pair("lora_te_text_model_encoder_layers_0_self_attn_q_proj"),
        ],
        [te],
        16,
        { allowPartial: true },
      );
      expect(m.errors[0]).toMatch(
        /^2 keys \(e\.g\. 'lora_te2_text_model_encoder_layers_0_self_attn_q_proj\.lora_down\.weight'\) are for a model with two text encoders/,
      );
      const ldm = mapLoraKeys(pair("lora_unet_input_blocks_1_1_proj_in"), [t], 16);
      expect(ldm.errors.join("\n")).toContain(
        "'lora_unet_input_blocks_1_1_proj_in.lora_down.weight' uses the original LDM layer names",
      );
    });

    it("skips keys that match no layer only with allowPartial, reporting mapped / total", () => {
      const keys = [
        info(`${k}.lora_down.weight`, [2, 8]),
        info(`${k}.lora_up.weight`, [6, 2]),
        info(`${k}.alpha`, []),
        ...pair("lora_unet_no_such_layer"),
      ];
      const strict = mapLoraKeys(keys, [t], 16);
      expect(strict.errors).toHaveLength(2);
      expect(strict).toMatchObject({ mapped: 3, total: 5 });
      const partial = mapLoraKeys(keys, [t], 16, { allowPartial: true });
      expect(partial.errors).toEqual([]);
      expect(partial).toMatchObject({
        mapped: 3,
        total: 5,
        unmapped: ["lora_unet_no_such_layer.lora_down.weight", "lora_unet_no_such_layer.lora_up.weight"],
      });
      expect(mapLoraKeys(pair("lora_unet_no_such_layer"), [t], 16, { allowPartial: true }).errors).toEqual([
        "none of the file's 2 keys matches a LoRA layer of this model",
      ]);
    });
  });
});
