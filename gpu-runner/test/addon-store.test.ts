import { createHash } from "node:crypto";
import { mkdtempSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { AddonIntegrityError, AddonStore } from "../src/addons/store.ts";

const hash = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
const blob = (n: number, fill: number) => new Uint8Array(n).fill(fill);

function fakeRemote(files: Record<string, Uint8Array>) {
  const calls: string[] = [];
  return {
    calls,
    fetchBytes: async (url: string) => {
      calls.push(url);
      await new Promise((r) => setTimeout(r, 5));
      const f = files[url];
      if (!f) throw new Error(`404 ${url}`);
      return new Uint8Array(f);
    },
  };
}

describe("add-on cache", () => {
  it("verifies sha256, fetches once for concurrent users, then serves from memory", async () => {
    const a = blob(100, 1);
    const remote = fakeRemote({ "u/a": a });
    const store = new AddonStore({ memoryBudgetBytes: 1000, fetchBytes: remote.fetchBytes });
    const src = { ref: "addon_a@1", url: "u/a", sha256: hash(a), sizeBytes: 100 };
    const [x, y] = await Promise.all([store.get(src), store.get(src)]);
    expect(remote.calls).toEqual(["u/a"]);
    expect(x.from).toBe("network");
    expect(y.bytes).toBe(x.bytes);
    expect(x.bytes.buffer).toBeInstanceOf(SharedArrayBuffer);
    expect((await store.get(src)).from).toBe("memory");
    expect(store.warm()).toEqual(["addon_a@1"]);
  });

  it("refuses bytes whose hash or size differ, and caches nothing then", async () => {
    const a = blob(100, 1);
    const remote = fakeRemote({ "u/a": a });
    const store = new AddonStore({ memoryBudgetBytes: 1000, fetchBytes: remote.fetchBytes });
    await expect(store.get({ ref: "x@1", url: "u/a", sha256: "0".repeat(64) })).rejects.toThrow(AddonIntegrityError);
    await expect(store.get({ ref: "x@1", url: "u/a", sha256: hash(a), sizeBytes: 99 })).rejects.toThrow(
      /fetched 100 bytes, expected 99/,
    );
    expect(store.warm()).toEqual([]);
  });

  it("a cached add-on whose sha256 changed is never used: the new version is fetched", async () => {
    const v1 = blob(50, 1);
    const v2 = blob(50, 2);
    const remote = fakeRemote({ "u/v1": v1, "u/v2": v2 });
    const store = new AddonStore({ memoryBudgetBytes: 1000, fetchBytes: remote.fetchBytes });
    expect((await store.get({ ref: "addon_s@1", url: "u/v1", sha256: hash(v1) })).bytes[0]).toBe(1);
    const again = await store.get({ ref: "addon_s@1", url: "u/v2", sha256: hash(v2) });
    expect(again.from).toBe("network");
    expect(again.bytes[0]).toBe(2);
  });

  it("evicts least recently used entries past the memory budget", async () => {
    const files = { "u/1": blob(400, 1), "u/2": blob(400, 2), "u/3": blob(400, 3) };
    const remote = fakeRemote(files);
    const store = new AddonStore({ memoryBudgetBytes: 900, fetchBytes: remote.fetchBytes });
    const src = (i: number) => ({
      ref: `addon_${i}@1`,
      url: `u/${i}`,
      sha256: hash(files[`u/${i}` as keyof typeof files]),
    });
    await store.get(src(1));
    await store.get(src(2));
    await store.get(src(1)); // 1 is now the most recently used
    await store.get(src(3)); // over budget: 2 goes
    expect(store.warm().sort()).toEqual(["addon_1@1", "addon_3@1"]);
    expect((await store.get(src(2))).from).toBe("network");
  });

  it("keeps a disk copy, re-verified when read back, within a disk budget", async () => {
    const dir = mkdtempSync(join(tmpdir(), "addon-cache-"));
    const a = blob(300, 7);
    const remote = fakeRemote({ "u/a": a, "u/b": blob(300, 8), "u/c": blob(300, 9) });
    const first = new AddonStore({
      memoryBudgetBytes: 0,
      diskDir: dir,
      diskBudgetBytes: 700,
      fetchBytes: remote.fetchBytes,
    });
    const src = { ref: "addon_a@1", url: "u/a", sha256: hash(a) };
    await first.get(src);
    const second = new AddonStore({ memoryBudgetBytes: 1000, diskDir: dir, fetchBytes: remote.fetchBytes });
    expect((await second.get(src)).from).toBe("disk");
    // Corrupt the disk copy: it is dropped and fetched again.
    writeFileSync(join(dir, hash(a)), blob(300, 0));
    const third = new AddonStore({ memoryBudgetBytes: 1000, diskDir: dir, fetchBytes: remote.fetchBytes });
    const back = await third.get(src);
    expect(back.from).toBe("network");
    expect(back.bytes[0]).toBe(7);
    await first.get({ ref: "b@1", url: "u/b", sha256: hash(blob(300, 8)) });
    await first.get({ ref: "c@1", url: "u/c", sha256: hash(blob(300, 9)) });
    expect(readdirSync(dir).length).toBeLessThanOrEqual(2);
  });
});
