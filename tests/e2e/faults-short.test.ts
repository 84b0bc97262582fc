/**
 * The fault suite, short (`npm run test:faults` runs it all): a runner SIGKILLed during a load, and the store
 * answering 503 for longer than an upload's tries. Every job ends, once, with its images as recorded, and the
 * outage burns no attempt.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startFaultProxy, type FaultProxy } from "../faults/proxy.ts";
import { runScenario } from "../faults/suite.ts";
import { startStack, type Stack } from "./stack.ts";

let stack: Stack;
let proxy: FaultProxy;

beforeAll(async () => {
  stack = await startStack({ runners: 0, env: { LEASE_TTL_MS: "3000", SKIP_DEMO: "1" } });
  proxy = await startFaultProxy(stack.edgeUrl);
});
afterAll(async () => {
  await proxy?.close();
  await stack?.stop();
});

describe("faults (short)", () => {
  it("a runner SIGKILLed mid-load: every job terminal, none lost or completed twice, images as recorded", async () => {
    const o = await runScenario(
      stack,
      proxy,
      { name: "short-sigkill", jobs: 4, runners: 2, steps: 30, fault: { kind: "kill", signal: "SIGKILL", count: 1 } },
      80_000,
    );
    expect(o.violations).toEqual([]);
    expect(o.succeeded + o.failed).toBe(4);
    expect(o.faults).toBe(1);
  });

  it("the store answering 503 for 6 s: every job succeeds and no attempt is burned by the outage", async () => {
    const o = await runScenario(
      stack,
      proxy,
      {
        name: "short-503",
        jobs: 3,
        runners: 1,
        steps: 10,
        fault: { kind: "storage", mode: "503", forMs: 6_000 },
        allSucceed: true,
      },
      80_000,
    );
    expect(o.violations).toEqual([]);
    expect(o.succeeded).toBe(3);
    expect(proxy.counts["503"]).toBeGreaterThan(0);
  });
});
