import { describe, expect, it } from "vitest";
import { IsolateCache } from "../src/lib/isolate-cache.ts";

describe("IsolateCache", () => {
  it("keeps found rows for its TTL per scope, never misses, and forgets a scope on clear", async () => {
    const cache = new IsolateCache<string>(1000, 2);
    const scope = {};
    let loads = 0;
    const load = (value: string | undefined) => async () => {
      loads++;
      return value;
    };
    expect(await cache.get(scope, "a", load("A"), 0)).toBe("A");
    expect(await cache.get(scope, "a", load("changed"), 999)).toBe("A");
    expect(loads).toBe(1);
    // Past the TTL the row is read again.
    expect(await cache.get(scope, "a", load("A2"), 1000)).toBe("A2");
    // Another scope (another database binding) shares nothing.
    expect(await cache.get({}, "a", load("other"), 1000)).toBe("other");
    // A miss is not kept: a row created after it is found at once.
    expect(await cache.get(scope, "b", load(undefined), 1000)).toBeUndefined();
    expect(await cache.get(scope, "b", load("B"), 1001)).toBe("B");
    // Bounded: a third key pushes out the oldest.
    await cache.get(scope, "c", load("C"), 1002);
    loads = 0;
    expect(await cache.get(scope, "a", load("A3"), 1003)).toBe("A3");
    expect(loads).toBe(1);
    cache.clear(scope);
    expect(await cache.get(scope, "c", load("C2"), 1004)).toBe("C2");
  });
});
