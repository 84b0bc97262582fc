/** LoRA files parsed once per (model, file hash) in a worker, kept in a bounded cache (least recent dropped). */
import type { Bundle } from "../pipeline/bundle.ts";
import { LoraError, parseLora, type LoraUse, type ParsedLora } from "./lora.ts";
import type { RequestAddons } from "./request-addons.ts";

const PARSED_LORAS_KEPT = 64;

export class LoraCache {
  private readonly parsed = new Map<string, ParsedLora>();

  /** The file parsed for `bundle`'s LoRA targets (the same file maps differently onto another model). */
  get(bundle: Bundle, sha256: string, bytes: Uint8Array): ParsedLora {
    const key = `${bundle.dir}|${sha256}`;
    let parsed = this.parsed.get(key);
    if (parsed) {
      this.parsed.delete(key);
    } else {
      const spec = bundle.manifest.lora;
      if (!spec) throw new LoraError(`model ${bundle.manifest.name} takes no LoRAs`);
      parsed = parseLora(bytes, spec.targets, spec.max_rank);
    }
    this.parsed.set(key, parsed);
    while (this.parsed.size > PARSED_LORAS_KEPT) this.parsed.delete(this.parsed.keys().next().value!);
    return parsed;
  }

  /** A request's LoRAs with their scales, parsed for `bundle`. */
  uses(bundle: Bundle, loras: RequestAddons["loras"]): LoraUse[] {
    return loras.map((l): LoraUse => ({ lora: this.get(bundle, l.sha256, l.bytes), scale: l.scale }));
  }
}
