/** LoRA files parsed once per (model, file hash, partial or not) in a worker, kept in a bounded cache (least recent dropped). */
import type { Bundle } from "../pipeline/bundle.ts";
import { LoraError, parseLora, type LoraUse, type ParsedLora } from "./lora.ts";
import type { LoraLoadReport, RequestAddons } from "./request-addons.ts";

const PARSED_LORAS_KEPT = 64;

export class LoraCache {
  private readonly parsed = new Map<string, ParsedLora>();

  /**
   * The file parsed for `bundle`'s LoRA targets (the same file maps differently onto another model). A file that maps
   * only in part is refused, naming the keys, unless `allowPartial`: the flag is part of the key, so a request that
   * did not opt in is refused even after another one loaded the file.
   */
  get(bundle: Bundle, sha256: string, bytes: Uint8Array, allowPartial = false): ParsedLora {
    const key = `${bundle.dir}|${sha256}|${allowPartial ? "partial" : "whole"}`;
    let parsed = this.parsed.get(key);
    if (parsed) {
      this.parsed.delete(key);
    } else {
      const spec = bundle.manifest.lora;
      if (!spec) throw new LoraError(`model ${bundle.manifest.name} takes no LoRAs`);
      parsed = parseLora(bytes, spec.targets, spec.max_rank, { allowPartial });
    }
    this.parsed.set(key, parsed);
    while (this.parsed.size > PARSED_LORAS_KEPT) this.parsed.delete(this.parsed.keys().next().value!);
    return parsed;
  }

  /** A request's LoRAs with their scales, parsed for `bundle`. */
  uses(bundle: Bundle, loras: RequestAddons["loras"]): LoraUse[] {
    return loras.map((l): LoraUse => ({ lora: this.get(bundle, l.sha256, l.bytes, l.allowPartial), scale: l.scale }));
  }

  /** Per request, each LoRA's keys mapped of its file's total (what provenance records). */
  reports(bundle: Bundle, addons: RequestAddons[]): LoraLoadReport[][] {
    return addons.map((a) =>
      a.loras.map((l) => {
        const report = this.get(bundle, l.sha256, l.bytes, l.allowPartial).report;
        return { sha256: l.sha256, mapped: report?.mapped ?? 0, total: report?.total ?? 0 };
      }),
    );
  }
}
