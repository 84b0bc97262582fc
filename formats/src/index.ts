// Everything at once; importers that need one format take its subpath (`@imagegen/formats/tar`) instead.
export * from "./safetensors.ts";
export * from "./tar.ts";
export * from "./lora-keys.ts";
export * from "./lora-targets.ts";
export * from "./onnx-reader.ts";
export * from "./manifest.ts";
export * from "./png.ts";
