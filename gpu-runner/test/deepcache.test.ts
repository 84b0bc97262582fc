import { describe, expect, it } from "vitest";
import { deepCacheSchedule } from "../src/cache/deepcache.ts";

const fullIndices = (s: boolean[]) => s.flatMap((f, i) => (f ? [i] : []));

describe("deepCacheSchedule", () => {
  it("uniform: a full pass when i % interval == 0", () => {
    expect(fullIndices(deepCacheSchedule(10, { interval: 3, mode: "uniform" }))).toEqual([0, 3, 6, 9]);
    expect(deepCacheSchedule(5, { interval: 1, mode: "uniform" }).every(Boolean)).toBe(true);
  });

  it("non-uniform: as many full passes as uniform, step 0 full, denser around the centre", () => {
    for (const interval of [2, 3, 5]) {
      const s = deepCacheSchedule(50, { interval, mode: "non-uniform" });
      const full = fullIndices(s);
      expect(full.length).toBe(Math.ceil(50 / interval));
      expect(full[0]).toBe(0);
      const gaps = full.slice(1).map((v, i) => v - full[i]!);
      const nearCentre = full.findIndex((v) => v >= 15);
      // the gap at the centre is the smallest; the schedule thins out towards the end
      expect(Math.min(...gaps)).toBe(gaps[nearCentre - 1] ?? gaps[nearCentre]);
      expect(gaps[gaps.length - 1]!).toBeGreaterThan(Math.min(...gaps));
    }
    expect(fullIndices(deepCacheSchedule(50, { interval: 5, mode: "non-uniform" }))).toEqual([
      0, 6, 11, 14, 15, 19, 24, 29, 35, 42,
    ]);
  });

  it("rejects nonsense", () => {
    expect(() => deepCacheSchedule(0, { interval: 2, mode: "uniform" })).toThrow(RangeError);
    expect(() => deepCacheSchedule(10, { interval: 0, mode: "uniform" })).toThrow(RangeError);
  });
});
