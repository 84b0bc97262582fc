/**
 * The add-on cache: fetched by (presigned) URL, verified against its sha256, held in memory within a byte budget
 * (least recently used first out) and on local disk (keyed by hash, re-verified when read back). Concurrent
 * requests for one add-on share one fetch. Bytes live in SharedArrayBuffers so inference workers read them
 * without a copy. The warm set (what is parsed-ready in memory) goes to the edge with each lease and heartbeat,
 * which routes jobs to runners that already hold their add-ons.
 */
import { createHash } from "node:crypto";
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { RunnerError } from "../errors.ts";

export class AddonIntegrityError extends RunnerError {
  override readonly name = "AddonIntegrityError";
  constructor(message: string, options?: ErrorOptions) {
    super("addon_integrity", message, options);
  }
}

export interface AddonSource {
  /** "addon_id@version": the identity the edge routes by. */
  ref: string;
  url: string;
  sha256: string;
  sizeBytes?: number | null;
}

export interface FetchedAddon {
  ref: string;
  sha256: string;
  bytes: Uint8Array;
  /** Where it came from this time, and how long that took. */
  from: "memory" | "disk" | "network";
  ms: number;
}

export interface AddonStoreOptions {
  memoryBudgetBytes: number;
  diskDir?: string;
  diskBudgetBytes?: number;
  /** Injected for tests and benchmarks (a simulated storage delay); defaults to global fetch. */
  fetchBytes?: (url: string) => Promise<Uint8Array>;
}

const pick = (s: { size: number; mtimeMs: number }) => ({ size: s.size, mtimeMs: s.mtimeMs });
const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

function shared(bytes: Uint8Array): Uint8Array {
  const out = new Uint8Array(new SharedArrayBuffer(bytes.byteLength));
  out.set(bytes);
  return out;
}

async function httpBytes(url: string): Promise<Uint8Array> {
  const res = await fetch(url, { signal: AbortSignal.timeout(120_000) });
  if (!res.ok) throw new Error(`add-on fetch answered ${res.status}`);
  return new Uint8Array(await res.arrayBuffer());
}

export class AddonStore {
  private readonly memory = new Map<string, { ref: string; bytes: Uint8Array }>(); // by sha256, in LRU order
  private readonly inflight = new Map<string, Promise<Uint8Array>>();
  private memoryBytes = 0;
  private readonly refs = new Map<string, string>(); // ref → sha256 of what is held
  private readonly o: AddonStoreOptions;

  constructor(options: AddonStoreOptions) {
    this.o = options;
    if (options.diskDir) mkdirSync(options.diskDir, { recursive: true });
  }

  /** Refs held in memory, for the edge's affinity routing. */
  warm(): string[] {
    return [...this.refs].filter(([, hash]) => this.memory.has(hash)).map(([ref]) => ref);
  }

  async get(src: AddonSource): Promise<FetchedAddon> {
    const start = performance.now();
    const want = src.sha256.toLowerCase();
    const hit = this.memory.get(want);
    if (hit) {
      this.memory.delete(want);
      this.memory.set(want, hit); // most recently used last
      this.refs.set(src.ref, want);
      return { ref: src.ref, sha256: want, bytes: hit.bytes, from: "memory", ms: performance.now() - start };
    }
    const fromDisk = this.readDisk(want);
    if (fromDisk) {
      this.remember(src.ref, want, fromDisk);
      return { ref: src.ref, sha256: want, bytes: fromDisk, from: "disk", ms: performance.now() - start };
    }
    let pending = this.inflight.get(want);
    if (!pending) {
      pending = (async () => {
        const raw = await (this.o.fetchBytes ?? httpBytes)(src.url);
        if (src.sizeBytes != null && raw.byteLength !== src.sizeBytes) {
          throw new AddonIntegrityError(
            `add-on ${src.ref}: fetched ${raw.byteLength} bytes, expected ${src.sizeBytes}`,
          );
        }
        const got = sha256(raw);
        if (got !== want)
          throw new AddonIntegrityError(`add-on ${src.ref}: sha256 is ${got}, expected ${want}; refusing it`);
        const bytes = shared(raw);
        this.writeDisk(want, bytes);
        this.remember(src.ref, want, bytes);
        return bytes;
      })().finally(() => this.inflight.delete(want));
      this.inflight.set(want, pending);
    }
    const bytes = await pending;
    return { ref: src.ref, sha256: want, bytes, from: "network", ms: performance.now() - start };
  }

  private remember(ref: string, hash: string, bytes: Uint8Array): void {
    this.refs.set(ref, hash);
    if (bytes.byteLength > this.o.memoryBudgetBytes) return;
    this.memory.set(hash, { ref, bytes });
    this.memoryBytes += bytes.byteLength;
    for (const [h, entry] of this.memory) {
      if (this.memoryBytes <= this.o.memoryBudgetBytes) break;
      this.memory.delete(h);
      this.memoryBytes -= entry.bytes.byteLength;
    }
  }

  private readDisk(hash: string): Uint8Array | undefined {
    if (!this.o.diskDir) return undefined;
    const path = join(this.o.diskDir, hash);
    let raw: Uint8Array;
    try {
      raw = new Uint8Array(readFileSync(path));
    } catch {
      return undefined;
    }
    // The disk is not trusted either: a file that changed under us is dropped and fetched again.
    if (sha256(raw) !== hash) {
      rmSync(path, { force: true });
      return undefined;
    }
    return shared(raw);
  }

  private writeDisk(hash: string, bytes: Uint8Array): void {
    if (!this.o.diskDir) return;
    if (this.o.diskBudgetBytes !== undefined && bytes.byteLength > this.o.diskBudgetBytes) return;
    const path = join(this.o.diskDir, hash);
    const tmp = `${path}.${process.pid}.tmp`;
    writeFileSync(tmp, bytes);
    renameSync(tmp, path); // atomic: a crash never leaves a half-written cache entry
    if (this.o.diskBudgetBytes !== undefined) this.trimDisk(this.o.diskDir, this.o.diskBudgetBytes);
  }

  /** Deletes the least recently written cache files until the folder fits its budget. */
  private trimDisk(dir: string, budget: number): void {
    const files = readdirSync(dir)
      .filter((f) => /^[0-9a-f]{64}$/.test(f))
      .map((f) => ({ path: join(dir, f), ...pick(statSync(join(dir, f))) }))
      .sort((a, b) => a.mtimeMs - b.mtimeMs);
    let total = files.reduce((sum, f) => sum + f.size, 0);
    for (const f of files) {
      if (total <= budget) break;
      rmSync(f.path, { force: true });
      total -= f.size;
    }
  }
}
