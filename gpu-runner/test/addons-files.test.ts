import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { mapLoraKeys, kohyaPrefix } from "@imagegen/formats/lora-keys";
import { parseHeader } from "@imagegen/formats/safetensors";
import { ModelManifest } from "@imagegen/formats/manifest";

const bundle = join(import.meta.dirname, "../models/tiny-shapes-random");
const manifest = ModelManifest.parse(JSON.parse(readFileSync(join(bundle, "manifest.json"), "utf8")));
const targets = manifest.lora!.targets;

describe("LoRA keys onto the model's targets", () => {
  it("maps the zoo's kohya and PEFT files onto the same modules", () => {
    const read = (name: string) => {
      const file = new Uint8Array(readFileSync(join(bundle, "addons", name)));
      return parseHeader(file, file.byteLength);
    };
    const kohya = mapLoraKeys(read("random-lora-kohya.safetensors").tensors.values(), targets, manifest.lora!.max_rank);
    const peft = mapLoraKeys(read("random-lora-peft.safetensors").tensors.values(), targets, manifest.lora!.max_rank);
    expect(kohya.errors).toEqual([]);
    expect(peft.errors).toEqual([]);
    expect(kohya.layers.length).toBeGreaterThan(0);
    expect(kohya.layers.map((l) => l.module).sort()).toEqual(peft.layers.map((l) => l.module).sort());
    expect(kohya.layers.every((l) => l.convention === "kohya" && l.downKey.startsWith(kohyaPrefix(l.module)))).toBe(
      true,
    );
  });
});
