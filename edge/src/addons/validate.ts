/**
 * Validates an uploaded add-on against its family's models before it becomes usable, with the same parsers the
 * runner loads it with (gpu-runner/src/addons): a reason a person can act on, or what was found.
 */
import { modelsTable, type Db } from "@imagegen/db";
import { mapLoraKeys } from "../../../gpu-runner/src/addons/lora-keys.ts";
import { headerByteLength, parseHeader, SafetensorsError } from "../../../gpu-runner/src/addons/safetensors.ts";
import { ModelSpec } from "../schemas/models.ts";
import type { ObjectStore } from "../storage/index.ts";

export type Verdict = { ok: true; details: Record<string, unknown> } | { ok: false; reason: string };

export async function validateLora(db: Db, store: ObjectStore, key: string, size: number, family: string): Promise<Verdict> {
  const models = (await modelsTable.modelsOfFamily(db, family)).map((m) => ({ id: m.id, spec: ModelSpec.parse(m.spec) })).filter((m) => m.spec.lora_targets);
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
  for (const m of models) {
    const mapping = mapLoraKeys(header.tensors.values(), m.spec.lora_targets!, m.spec.lora_max_rank ?? 64);
    if (mapping.errors.length) {
      const more = mapping.errors.length > 5 ? ` (and ${mapping.errors.length - 5} more)` : "";
      return { ok: false, reason: `Does not fit model '${m.id}': ${mapping.errors.slice(0, 5).join("; ")}${more}.` };
    }
    if (m === models[0]) {
      const ranks = mapping.layers.map((l) => l.rank);
      return {
        ok: true,
        details: {
          format: "safetensors",
          convention: mapping.layers[0]!.convention,
          layers: mapping.layers.length,
          rank: Math.max(...ranks),
          modules: mapping.layers.map((l) => l.module),
          checked_against: models.map((x) => x.id),
        },
      };
    }
  }
  return { ok: false, reason: "unreachable" };
}
