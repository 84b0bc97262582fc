/**
 * LoRA sets merged into the U-Net's weights (`W + s·up·down`), a session built per set and kept in a bounded cache.
 * A merge-mode model (no branch inputs) always runs merged; a branch model merges a set once it is hot (seen in
 * `mergeHotAfter` batches), in the background, and runs later batches of that set on the merged weights.
 */
import * as ort from "onnxruntime-node";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { Component, sessionOptions, type Bundle, type ComponentName, type SessionConfig } from "../pipeline/bundle.ts";
import type { LoraCache } from "./lora-cache.ts";
import { LoraError } from "./lora.ts";
import { externalDataFiles, mergeLoraFiles } from "./merge.ts";
import { loraSetKey, type RequestAddons } from "./request-addons.ts";

/** Merged U-Nets kept per worker (each holds its own weights): a bounded cache of add-on sets. */
const MERGED_BUNDLES_KEPT = 4;
const SET_USES_KEPT = 256;

/** A set seen in 3 batches is likely to come again: merging it costs about one LCM-4 generation (bench/ADDONS.md). */
export const DEFAULT_MERGE_HOT_AFTER = 3;

/** The cache key of a branch model's batch whose requests all bring one non-empty LoRA set; else undefined. */
function hotSetKey(bundle: Bundle, keys: string[]): string | undefined {
  if (bundle.manifest.lora?.mode !== "branch" || keys.length === 0 || keys[0] === "" || keys.some((k) => k !== keys[0]))
    return undefined;
  return `${bundle.dir}|${keys[0]}`;
}

interface MergedEntry {
  promise: Promise<Bundle>;
  ready?: Bundle;
}

export class HotMerge {
  private readonly merged = new Map<string, MergedEntry>();
  /** Batches per add-on set on a branch model, towards `mergeHotAfter` (bounded, least recent dropped). */
  private readonly setUses = new Map<string, number>();
  private readonly session: SessionConfig;
  private readonly loras: LoraCache;
  private readonly mergeHotAfter: number;
  /** How many merged sessions were built (a warm add-on set builds none): for tests and the bench. */
  builds = 0;

  constructor(session: SessionConfig, loras: LoraCache, mergeHotAfter: number) {
    this.session = session;
    this.loras = loras;
    this.mergeHotAfter = mergeHotAfter;
  }

  /** See AddonRuntime.bundleFor. */
  async bundleFor(bundle: Bundle, addons: RequestAddons[]): Promise<Bundle> {
    const spec = bundle.manifest.lora;
    if (!spec || addons.length === 0) return bundle;
    const keys = addons.map((a) => loraSetKey(a.loras));
    if (spec.mode === "merge") {
      if (keys.some((k) => k !== keys[0]))
        throw new LoraError(
          `model ${bundle.manifest.name} merges LoRAs: requests with different LoRAs cannot share a batch`,
        );
      if (keys[0] === "") return bundle;
      return this.mergedSet(bundle, keys[0]!, addons[0]!).promise;
    }
    const hot = this.hotMerged(bundle, keys);
    this.countUse(bundle, addons);
    return hot ?? bundle;
  }

  /** A branch model's merged copy for the batch's one LoRA set (`loraSetKey` per request), if it is ready. */
  hotMerged(bundle: Bundle, keys: string[]): Bundle | undefined {
    const cacheKey = hotSetKey(bundle, keys);
    if (cacheKey === undefined) return undefined;
    const entry = this.merged.get(cacheKey);
    if (!entry?.ready) return undefined;
    this.merged.delete(cacheKey); // most recently used last
    this.merged.set(cacheKey, entry);
    return entry.ready;
  }

  /** Counts a batch's LoRA set on a branch model and starts merging it in the background once it is hot. */
  countUse(bundle: Bundle, addons: RequestAddons[]): void {
    const cacheKey = hotSetKey(
      bundle,
      addons.map((a) => loraSetKey(a.loras)),
    );
    if (cacheKey === undefined || this.mergeHotAfter === 0) return;
    // Every target's weight must be named in every component that holds it, or a merge would drop layers.
    if (!bundle.manifest.lora!.targets.every((t) => t.components.every((c) => t.weight?.[c]))) return;
    const uses = (this.setUses.get(cacheKey) ?? 0) + 1;
    this.setUses.delete(cacheKey);
    this.setUses.set(cacheKey, uses);
    while (this.setUses.size > SET_USES_KEPT) this.setUses.delete(this.setUses.keys().next().value!);
    if (uses >= this.mergeHotAfter && !this.merged.has(cacheKey))
      this.mergedSet(bundle, loraSetKey(addons[0]!.loras), addons[0]!).promise.catch(() => {});
  }

  /** Resolves when every merge started so far has finished (built or failed). */
  async settled(): Promise<void> {
    await Promise.allSettled([...this.merged.values()].map((e) => e.promise));
  }

  /** The cache entry of an add-on set's merged bundle, building it when absent (evicting the least recent). */
  private mergedSet(bundle: Bundle, key: string, addons: RequestAddons): MergedEntry {
    const cacheKey = `${bundle.dir}|${key}`;
    let entry = this.merged.get(cacheKey);
    if (entry) {
      this.merged.delete(cacheKey);
    } else {
      const promise = this.build(bundle, key, addons);
      const created: MergedEntry = { promise };
      promise.then(
        (b) => (created.ready = b),
        () => this.merged.delete(cacheKey),
      );
      entry = created;
    }
    this.merged.set(cacheKey, entry);
    while (this.merged.size > MERGED_BUNDLES_KEPT) {
      const [oldest, evicted] = this.merged.entries().next().value!;
      this.merged.delete(oldest);
      void evicted.promise.then((b) => b.release()).catch(() => {});
    }
    return entry;
  }

  private async build(bundle: Bundle, key: string, addons: RequestAddons): Promise<Bundle> {
    const spec = bundle.manifest.lora!;
    const uses = this.loras.uses(bundle, addons.loras);
    const replaced: Partial<Record<ComponentName, Component>> = {};
    for (const [name, component] of Object.entries(bundle.components) as [ComponentName, Component][]) {
      if (!spec.targets.some((t) => t.weight?.[name])) continue;
      const path = join(bundle.dir, component.spec.path);
      const model = new Uint8Array(readFileSync(path));
      // An export past 2 GB keeps its weights in model.onnx_data: the merged copy is handed to ONNX Runtime in memory.
      const locations = externalDataFiles(model);
      const external = new Map(locations.map((loc) => [loc, new Uint8Array(readFileSync(join(dirname(path), loc)))]));
      const merged = mergeLoraFiles({ model, external }, name, spec.targets, uses);
      const options = locations.length
        ? {
            ...sessionOptions(this.session),
            externalData: locations.map((loc) => ({ path: loc, data: merged.external.get(loc) ?? external.get(loc)! })),
          }
        : sessionOptions(this.session);
      replaced[name] = new Component(name, component.spec, await ort.InferenceSession.create(merged.model, options));
      this.builds++;
    }
    return {
      ...bundle,
      lorasMerged: key,
      components: { ...bundle.components, ...replaced },
      release: async () => {
        await Promise.all(Object.values(replaced).map((c) => c.session.release()));
      },
    };
  }
}
