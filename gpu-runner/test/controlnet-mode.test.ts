import { describe, expect, it } from "vitest";
import { ControlNetModeChooser, type ControlNetMode, controlNetKind } from "../src/addons/controlnet-mode.ts";

/** Runs `n` batches of one kind whose step time per mode is given (a function of the batch index). */
function simulate(chooser: ControlNetModeChooser, n: number, ms: (mode: ControlNetMode, i: number) => number) {
  const modes: ControlNetMode[] = [];
  for (let i = 0; i < n; i++) {
    const mode = chooser.choose("k");
    modes.push(mode);
    chooser.record("k", mode, ms(mode, i));
  }
  return modes;
}

describe("ControlNet mode chosen by measurement", () => {
  it("calibrates both modes, then keeps the faster one and probes the other now and then", () => {
    const chooser = new ControlNetModeChooser({ cores: 2, calibration: 2, probeEvery: 8 });
    const modes = simulate(chooser, 40, (m) => (m === "sequence" ? 6 : 9));
    expect(modes.slice(0, 4)).toEqual(["sequence", "parallel", "sequence", "parallel"]);
    const after = modes.slice(4);
    expect(after.filter((m) => m === "sequence").length).toBeGreaterThan(after.length * 0.8);
    expect(after).toContain("parallel"); // probes
    expect(chooser.preferred("k")).toBe("sequence");
    expect(chooser.summary("k")).toEqual({ sequence: 6, parallel: 9 });
  });

  it("moves to parallel once it measures faster (a core freed)", () => {
    const chooser = new ControlNetModeChooser({ cores: 2, calibration: 2, probeEvery: 4, window: 3 });
    // Parallel is slow for 20 batches (the other core busy), then faster.
    const modes = simulate(chooser, 80, (m, i) => (m === "sequence" ? 6 : i < 20 ? 9 : 4));
    expect(modes.slice(10, 20).filter((m) => m === "parallel").length).toBeLessThanOrEqual(3);
    expect(modes.slice(60).filter((m) => m === "parallel").length).toBeGreaterThanOrEqual(15); // all but the probes
    expect(chooser.preferred("k")).toBe("parallel");
  });

  it("does not count each mode's first run: a slow warm-up does not decide", () => {
    // Parallel's first batch starts the ControlNet worker (100 ms a step); after that it is the faster mode.
    const chooser = new ControlNetModeChooser({ cores: 2, calibration: 2, probeEvery: 16 });
    let parallelRuns = 0;
    const modes = simulate(chooser, 30, (m) => (m === "sequence" ? 6 : parallelRuns++ === 0 ? 100 : 4));
    expect(modes.slice(0, 6)).toEqual(["sequence", "parallel", "sequence", "parallel", "sequence", "parallel"]);
    expect(chooser.summary("k")).toEqual({ sequence: 6, parallel: 4 });
    expect(modes.slice(6).filter((m) => m === "parallel").length).toBeGreaterThanOrEqual(23);
    // Counted, the warm-up would have held sequence: the median of [100, 4] is 52.
    const counted = new ControlNetModeChooser({ cores: 2, calibration: 2, probeEvery: 16, warmup: 0 });
    parallelRuns = 0;
    const held = simulate(counted, 14, (m) => (m === "sequence" ? 6 : parallelRuns++ === 0 ? 100 : 4));
    expect(held.slice(4)).toEqual(Array(10).fill("sequence"));
  });

  it("tells batches apart by each request's ControlNets, counted, not by the set of them", () => {
    const one = [{ controlnets: [{ dir: "/cn/a" }] }];
    const twice = [{ controlnets: [{ dir: "/cn/a" }, { dir: "/cn/a" }] }];
    const ab = [{ controlnets: [{ dir: "/cn/a" }, { dir: "/cn/b" }] }];
    const ba = [{ controlnets: [{ dir: "/cn/b" }, { dir: "/cn/a" }] }];
    expect(controlNetKind("/m", one)).not.toBe(controlNetKind("/m", twice));
    expect(controlNetKind("/m", ab)).toBe(controlNetKind("/m", ba));
    expect(controlNetKind("/m", one)).not.toBe(controlNetKind("/m", [...one, ...one]));
    expect(controlNetKind("/m", one)).not.toBe(controlNetKind("/other", one));
  });

  it("never tries parallel with one core, and ignores measurements that are not times", () => {
    const one = new ControlNetModeChooser({ cores: 1 });
    expect(new Set(simulate(one, 20, (m) => (m === "parallel" ? 1 : 10)))).toEqual(new Set(["sequence"]));
    const chooser = new ControlNetModeChooser({ cores: 2 });
    chooser.record("k", "parallel", Number.NaN);
    chooser.record("k", "parallel", -1);
    expect(chooser.summary("k")).toEqual({});
  });
});
