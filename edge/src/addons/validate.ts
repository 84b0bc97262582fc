/**
 * Validates an uploaded add-on against its family's models before it becomes usable, with the same parsers the
 * runner loads it with (gpu-runner/src/addons): a reason a person can act on, or what was found.
 */
import { modelsTable, type Db } from "@imagegen/db";
import { mapLoraKeys } from "@imagegen/formats/lora-keys";
import {
  DTYPE_BYTES,
  headerByteLength,
  parseHeader,
  SafetensorsError,
  type Dtype,
  type SafetensorsHeader,
} from "@imagegen/formats/safetensors";
import { listTar, TarError } from "@imagegen/formats/tar";
import { OnnxError, readOnnxIo } from "@imagegen/formats/onnx-reader";
import { ControlNetManifest, controlNetMismatches } from "@imagegen/formats/manifest";
import { ModelSpec } from "@imagegen/contracts";
import type { ObjectStore } from "../storage/index.ts";

export type Verdict = { ok: true; details: Record<string, unknown> } | { ok: false; reason: string };

async function familyModels(db: Db, family: string) {
  return (await modelsTable.modelsOfFamily(db, family)).map((m) => ({
    id: m.id,
    family: m.family,
    spec: ModelSpec.parse(m.spec),
  }));
}

export async function validateLora(
  db: Db,
  store: ObjectStore,
  key: string,
  size: number,
  family: string,
): Promise<Verdict> {
  const models = (await familyModels(db, family)).filter((m) => m.spec.lora_targets);
  if (models.length === 0) return { ok: false, reason: `No model of family '${family}' takes LoRAs.` };
  let header;
  try {
    const first = await store.readRange(key, 0, Math.min(8, size));
    if (!first) return { ok: false, reason: "The uploaded file is gone from storage." };
    const needed = headerByteLength(first);
    const prefix = await store.readRange(key, 0, Math.min(needed, size));
    header = parseHeader(prefix!, size);
  } catch (err) {
    if (err instanceof SafetensorsError) return { ok: false, reason: `Not a valid safetensors file: ${err.message}.` };
    throw err;
  }
  // The add-on must fit every model of its family that takes LoRAs (they share the architecture).
  const mappings = models.map((m) => ({
    m,
    mapping: mapLoraKeys(header.tensors.values(), m.spec.lora_targets!, m.spec.lora_max_rank ?? 64),
  }));
  for (const { m, mapping } of mappings) {
    if (mapping.errors.length) {
      const more = mapping.errors.length > 5 ? ` (and ${mapping.errors.length - 5} more)` : "";
      return { ok: false, reason: `Does not fit model '${m.id}': ${mapping.errors.slice(0, 5).join("; ")}${more}.` };
    }
  }
  const bad = await findNonFinite((offset, length) => store.readRange(key, offset, length), header);
  if (bad === "gone") return { ok: false, reason: "The uploaded file is gone from storage." };
  // A NaN or Inf reaches every image of every job that uses the file (other tenants' too, once public).
  if (bad)
    return {
      ok: false,
      reason: `Tensor '${bad.tensor}' holds a non-finite value (NaN or ±Inf) at element ${bad.element}; every image made with it would be broken.`,
    };
  const { layers } = mappings[0]!.mapping;
  return {
    ok: true,
    details: {
      format: "safetensors",
      convention: layers[0]!.convention,
      layers: layers.length,
      rank: Math.max(...layers.map((l) => l.rank)),
      modules: layers.map((l) => l.module),
      checked_against: models.map((x) => x.id),
    },
  };
}

/** Largest range read while checking values: memory stays bounded, and a 64 MB LoRA takes 16 reads. */
const VALUE_CHUNK_BYTES = 4 * 1024 * 1024;

/** Whether the element at byte `at` of `view` is NaN or ±Inf, per float dtype (integers never are). */
const NON_FINITE: Partial<Record<Dtype, (view: DataView, at: number) => boolean>> = {
  F64: (v, at) => !Number.isFinite(v.getFloat64(at, true)),
  F32: (v, at) => !Number.isFinite(v.getFloat32(at, true)),
  F16: (v, at) => (v.getUint16(at, true) & 0x7c00) === 0x7c00,
  BF16: (v, at) => (v.getUint16(at, true) & 0x7f80) === 0x7f80,
  F8_E5M2: (v, at) => (v.getUint8(at) & 0x7c) === 0x7c,
  F8_E4M3: (v, at) => (v.getUint8(at) & 0x7f) === 0x7f,
};

/**
 * The first non-finite value of any float tensor, read by range in chunks that end on element boundaries (the
 * tensors tile the data section, as parseHeader checked); "gone" when the file disappeared meanwhile.
 */
export async function findNonFinite(
  read: (offset: number, length: number) => Promise<Uint8Array | undefined>,
  header: SafetensorsHeader,
  chunkBytes = VALUE_CHUNK_BYTES,
): Promise<{ tensor: string; element: number } | "gone" | undefined> {
  const tensors = [...header.tensors.values()].filter((t) => t.end > t.begin).sort((a, b) => a.begin - b.begin);
  const dataEnd = tensors.at(-1)?.end ?? 0;
  let next = 0; // first tensor not yet wholly checked
  for (let at = 0; at < dataEnd; ) {
    let end = Math.min(at + chunkBytes, dataEnd);
    const cut = tensors.find((t) => t.begin < end && end < t.end);
    if (cut) {
      const size = DTYPE_BYTES[cut.dtype];
      const rounded = cut.begin + Math.floor((end - cut.begin) / size) * size;
      end = rounded > at ? rounded : at + size; // a chunk smaller than one element still reads the whole element
    }
    const bytes = await read(header.dataOffset + at, end - at);
    if (!bytes) return "gone";
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (let i = next; i < tensors.length && tensors[i]!.begin < end; i++) {
      const t = tensors[i]!;
      const check = NON_FINITE[t.dtype];
      const size = DTYPE_BYTES[t.dtype];
      if (check) {
        for (let o = Math.max(t.begin, at); o < Math.min(t.end, end); o += size) {
          if (check(view, o - at)) return { tensor: t.name, element: (o - t.begin) / size };
        }
      }
      if (t.end <= end) next = i + 1;
    }
    at = end;
  }
  return undefined;
}

/** Largest manifest.json read into memory (real ones are a few KB). */
const MAX_MANIFEST_BYTES = 1024 * 1024;

class Gone extends Error {}

/** `a, b and 3 more` */
const some = (items: readonly string[], n = 8, sep = ", ") =>
  (items.length > n ? `${items.slice(0, n).join(sep)} and ${items.length - n} more` : items.join(sep)) || "nothing";

/**
 * A ControlNet is a ustar archive of its bundle folder (manifest.json + the ONNX it names). Up to 512 MB, so it is
 * never read whole: the tar headers, manifest.json and the ONNX's graph inputs and outputs are read by range.
 */
export async function validateControlNet(
  db: Db,
  store: ObjectStore,
  key: string,
  size: number,
  family: string,
): Promise<Verdict> {
  const models = (await familyModels(db, family)).filter((m) => m.spec.supports_controlnet);
  if (models.length === 0) return { ok: false, reason: `No model of family '${family}' takes ControlNets.` };
  const read = async (offset: number, length: number) => {
    const bytes = await store.readRange(key, offset, length);
    if (!bytes) throw new Gone();
    return bytes;
  };
  try {
    let files;
    try {
      files = await listTar(read, size);
    } catch (err) {
      if (err instanceof TarError)
        return {
          ok: false,
          reason: `Not a valid tar archive: ${err.message}. Package the bundle folder with \`tar --format=ustar -cf cn.tar -C folder manifest.json controlnet/model.onnx\`.`,
        };
      throw err;
    }
    const entry = files.get("manifest.json");
    if (!entry)
      return {
        ok: false,
        reason: `The archive has no manifest.json at its top level (it holds: ${some([...files.keys()])}).`,
      };
    if (entry.size > MAX_MANIFEST_BYTES)
      return { ok: false, reason: `manifest.json is ${entry.size} bytes; at most ${MAX_MANIFEST_BYTES} are accepted.` };
    let json: unknown;
    try {
      json = JSON.parse(new TextDecoder().decode(entry.size ? await read(entry.offset, entry.size) : new Uint8Array()));
    } catch (err) {
      if (err instanceof SyntaxError) return { ok: false, reason: `manifest.json is not valid JSON: ${err.message}.` };
      throw err;
    }
    const parsed = ControlNetManifest.safeParse(json);
    if (!parsed.success) {
      const issues = parsed.error.issues.map((i) => `${i.path.join(".") || "(top level)"}: ${i.message}`);
      return { ok: false, reason: `manifest.json is not a ControlNet manifest: ${some(issues, 5, "; ")}.` };
    }
    const manifest = parsed.data;
    if (manifest.family !== family)
      return {
        ok: false,
        reason: `manifest.json is for family '${manifest.family}', but this add-on was created for '${family}'.`,
      };
    // Every model of the family it may feed: residuals are checked where the model's list is known (registered from its manifest).
    for (const m of models) {
      const problems = controlNetMismatches(manifest, {
        name: m.id,
        family: m.family,
        residuals: m.spec.controlnet_residuals,
      });
      if (problems.length) return { ok: false, reason: `Does not fit model '${m.id}': ${some(problems, 5, "; ")}.` };
    }
    const spec = manifest.components.controlnet;
    const path = spec.path.replace(/^\.\//, "");
    const onnx = files.get(path);
    if (!onnx)
      return {
        ok: false,
        reason: `The archive has no ${path}, the file components.controlnet.path names (it holds: ${some([...files.keys()])}).`,
      };
    let io;
    try {
      io = await readOnnxIo((offset, length) => read(onnx.offset + offset, length), onnx.size);
    } catch (err) {
      if (err instanceof OnnxError)
        return { ok: false, reason: `${path} is not a readable ONNX model: ${err.message}.` };
      throw err;
    }
    const problems = [
      ...compareNames(
        "input",
        spec.inputs.map((t) => t.name),
        io.inputs,
      ),
      ...compareNames(
        "output",
        spec.outputs.map((t) => t.name),
        io.outputs,
      ),
    ];
    if (problems.length) return { ok: false, reason: `${path} does not match manifest.json: ${problems.join("; ")}.` };
    return {
      ok: true,
      details: {
        format: "tar",
        name: manifest.name,
        conditioning: manifest.conditioning,
        residuals: Object.keys(manifest.residuals).length,
        onnx_bytes: onnx.size,
        checked_against: models.map((m) => m.id),
      },
    };
  } catch (err) {
    if (err instanceof Gone) return { ok: false, reason: "The uploaded file is gone from storage." };
    throw err;
  }
}

/** The graph's real tensor names against those manifest.json declares (dtypes and shapes the runner checks when it loads). */
function compareNames(what: "input" | "output", declared: readonly string[], graph: readonly string[]): string[] {
  const missing = declared.filter((n) => !graph.includes(n));
  const extra = graph.filter((n) => !declared.includes(n));
  return [
    ...(missing.length ? [`declared ${what}s not in the graph: ${some(missing)}`] : []),
    ...(extra.length ? [`graph ${what}s not declared: ${some(extra)}`] : []),
    ...(missing.length || extra.length ? [`the graph's ${what}s are ${some(graph)}`] : []),
  ];
}
