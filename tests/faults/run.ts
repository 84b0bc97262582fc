#!/usr/bin/env node
/**
 * `npm run test:faults`: every fault scenario (suite.ts) on one local stack, then tests/faults/REPORT.md with the
 * counts. Exits 1 when any invariant broke. Bounded: each scenario has a deadline; loopback only.
 *
 *   npm run test:faults                 # all scenarios
 *   npm run test:faults -- sigkill      # the scenarios whose names contain "sigkill"
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { startStack } from "../e2e/stack.ts";
import { startFaultProxy } from "./proxy.ts";
import { type Outcome, runScenario, SCENARIOS } from "./suite.ts";

const only = process.argv.slice(2);
const scenarios = SCENARIOS.filter((s) => only.length === 0 || only.some((o) => s.name.includes(o)));
const stack = await startStack({ runners: 0, env: { LEASE_TTL_MS: "3000", SKIP_DEMO: "1" } });
const proxy = await startFaultProxy(stack.edgeUrl);
const outcomes: Outcome[] = [];
try {
  for (const s of scenarios) {
    process.stderr.write(`[faults] ${s.name}: ${s.jobs} jobs, ${s.runners} runners\n`);
    const o = await runScenario(stack, proxy, s).catch(
      (err): Outcome => ({
        scenario: s.name,
        jobs: s.jobs,
        succeeded: 0,
        failed: 0,
        canceled: 0,
        failures: [],
        runnersStarted: 0,
        faults: 0,
        attempts: 0,
        starts: 0,
        storageHandBacks: 0,
        violations: [`the scenario did not finish: ${(err as Error).message}`],
        seconds: 0,
      }),
    );
    outcomes.push(o);
    process.stderr.write(
      `[faults] ${s.name}: ${o.succeeded}/${o.jobs} succeeded, ${o.violations.length} violations (${o.seconds} s)\n`,
    );
  }
} finally {
  // FAULTS_LOGS=<dir>: the launcher's output and every runner's, for a failed scenario's post-mortem.
  if (process.env.FAULTS_LOGS) writeFileSync(join(process.env.FAULTS_LOGS, "launcher.log"), stack.logs());
  await proxy.close();
  await stack.stop();
}

const rows = outcomes.map(
  (o) =>
    `| ${o.scenario} | ${o.jobs} | ${o.succeeded} | ${o.failed}${o.failures.length ? ` (${[...new Set(o.failures)].join(", ")})` : ""} | ${o.canceled} | ${o.faults} | ${o.runnersStarted} | ${o.attempts} / ${o.starts} | ${o.storageHandBacks} | ${o.violations.length} | ${o.seconds} |`,
);
const report = `# Fault suite report

\`npm run test:faults\` (tests/faults/run.ts) on ${new Date().toISOString().slice(0, 10)}: the local stack (wrangler dev, local R2,
runners on CPU), lease TTL 3 s, runner grace 1 s, the runners' storage requests through the fault proxy (tests/faults/proxy.ts).
Per scenario, after the load: every job terminal, none lost, none completed twice (the runners' \`job.done\` per job),
each succeeded job's images download with the recorded sha256, attempts counted ≤ leases acknowledged by a live runner
(\`job.start\`); storage and SIGSTOP scenarios also require every job to succeed. *faults*: signals sent, edge
restarts, or storage requests the proxy failed; *storage hand-backs*: jobs handed back as \`storage_unavailable\`
(requeued without an attempt: hence attempts < starts).

| scenario | jobs | succeeded | failed | canceled | faults | runners | attempts / starts | storage hand-backs | violations | s |
|---|---|---|---|---|---|---|---|---|---|---|
${rows.join("\n")}
${outcomes.some((o) => o.violations.length) ? `\n## Violations\n\n${outcomes.flatMap((o) => o.violations.map((v) => `- ${o.scenario}: ${v}`)).join("\n")}\n` : ""}`;
writeFileSync(join(import.meta.dirname, "REPORT.md"), report);
process.stdout.write(report);
process.exit(outcomes.some((o) => o.violations.length) ? 1 : 0);
