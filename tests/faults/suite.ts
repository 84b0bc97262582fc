/**
 * Fault scenarios against the real local stack: a load of jobs runs while runners are killed, stopped past their
 * lease, the edge restarts, or the store (behind the fault proxy) fails; then the invariants are checked from the
 * API and the runners' own logs. Bounded: a fixed number of jobs, a deadline for each scenario, loopback only.
 */
import { createHash } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { api, spawnRunner, waitFor, type Stack } from "../e2e/stack.ts";
import type { Generation } from "@imagegen/contracts";
import type { FaultMode, FaultProxy } from "./proxy.ts";

export type Fault =
  | { kind: "none" }
  | { kind: "kill"; signal: "SIGKILL" | "SIGTERM"; count: number }
  | { kind: "stop"; pauseMs: number }
  | { kind: "edge-restart" }
  | { kind: "storage"; mode: FaultMode; forMs: number };

export interface Scenario {
  name: string;
  jobs: number;
  runners: number;
  fault: Fault;
  /** Every job must succeed (a fault that must cost no job: storage outages, graceful stops). */
  allSucceed?: boolean;
  steps?: number;
}

export interface Outcome {
  scenario: string;
  jobs: number;
  succeeded: number;
  failed: number;
  canceled: number;
  /** Failure codes of the failed jobs. */
  failures: string[];
  runnersStarted: number;
  faults: number;
  /** Attempts the edge counted, over all jobs; starts the runners logged (each an acknowledged lease). */
  attempts: number;
  starts: number;
  /** Hand-backs with storage_unavailable (requeued without an attempt). */
  storageHandBacks: number;
  violations: string[];
  seconds: number;
}

type Runner = Awaited<ReturnType<typeof spawnRunner>>;
/** What the checks read of a generation (contracts' Generation). */
type Job = Pick<Generation, "id" | "status" | "attempts" | "error" | "request">;
const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));
const alive = (r: Runner) => r.exitCode === null && r.signalCode === null;

/** The runners' JSON log lines (stderr), every runner of the scenario, killed ones included. */
function events(runners: Runner[]): Array<{ event: string; job?: string; code?: string }> {
  return runners.flatMap((r) =>
    r
      .output()
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .flatMap((l) => {
        try {
          return [JSON.parse(l)];
        } catch {
          return [];
        }
      }),
  );
}

export async function runScenario(
  stack: Stack,
  proxy: FaultProxy,
  s: Scenario,
  deadlineMs = 180_000,
): Promise<Outcome> {
  const runners: Runner[] = [];
  try {
    return await scenario(stack, proxy, s, deadlineMs, runners);
  } catch (err) {
    // A scenario that could not finish leaves no runner behind.
    proxy.mode = "pass";
    for (const r of runners) if (alive(r)) r.kill("SIGKILL");
    throw err;
  }
}

async function scenario(
  stack: Stack,
  proxy: FaultProxy,
  s: Scenario,
  deadlineMs: number,
  runners: Runner[],
): Promise<Outcome> {
  const t0 = Date.now();
  const start = async () => {
    // A short grace: SIGTERM hands a job back within a second instead of finishing it.
    const r = await spawnRunner(stack, `${s.name}-${runners.length + 1}`, {
      args: ["--grace-ms", "1000"],
      env: { STORAGE_PROXY: proxy.url },
    });
    runners.push(r);
    return r;
  };
  for (let i = 0; i < s.runners; i++) await start();
  const ids: string[] = [];
  for (let i = 0; i < s.jobs; i++) {
    const r = await api(stack, "POST", "/v1/generations", stack.apiKey, {
      model: stack.defaultModel,
      prompt: `fault ${s.name} ${i}`,
      steps: s.steps ?? 40,
      n: 2,
      seed: 1000 + i,
    });
    if (r.status !== 202) throw new Error(`submit: ${r.status} ${JSON.stringify(r.body)}`);
    ids.push(r.body.id);
  }
  // One list call a second for all the scenario's jobs: polling each job would run into the key's rate limit.
  const snapshot = async () => {
    const r = await api(stack, "GET", "/v1/generations?limit=100", stack.apiKey);
    if (r.status !== 200) throw new Error(`list: ${r.status} ${JSON.stringify(r.body)}`);
    const byId = new Map<string, Job>(r.body.data.map((j: Job) => [j.id, j]));
    return ids.map((id) => byId.get(id));
  };
  const poll = async <T>(
    what: string,
    probe: (jobs: Array<Job | undefined>) => T | false,
    timeoutMs: number,
  ): Promise<T> => {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const v = probe(await snapshot().catch(() => []));
      if (v) return v;
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
      await pause(1_000);
    }
  };
  await poll("a job to run", (jobs) => jobs.some((j) => j?.status === "running"), 60_000);

  let faults = 0;
  const f = s.fault;
  /** A runner in the middle of a job (its last job event is a start), waited for up to 30 s; else any live one. */
  const busyRunner = async () => {
    const end = Date.now() + 30_000;
    for (;;) {
      const busy = runners.filter(
        (r) =>
          alive(r) &&
          events([r])
            .filter((e) => e.event.startsWith("job.") || e.event === "lease.lost")
            .at(-1)?.event === "job.start",
      );
      if (busy.length || Date.now() > end)
        return (busy.length ? busy : runners.filter(alive))[
          Math.floor(Math.random() * (busy.length || runners.filter(alive).length))
        ];
      await pause(100);
    }
  };
  if (f.kind === "kill") {
    for (let i = 0; i < f.count; i++) {
      await pause(300 + Math.random() * 1_200);
      const victim = await busyRunner();
      if (!victim) break;
      victim.kill(f.signal);
      faults++;
      await start();
    }
  } else if (f.kind === "stop") {
    const victim = (await busyRunner())!;
    victim.kill("SIGSTOP");
    faults++;
    await pause(f.pauseMs);
    victim.kill("SIGCONT");
  } else if (f.kind === "edge-restart") {
    process.kill(stack.pid, "SIGUSR2");
    faults++;
    await pause(1_000);
    await waitFor(
      "the edge to come back",
      async () => (await fetch(`${stack.edgeUrl}/healthz`).catch(() => null))?.ok ?? false,
      120_000,
    );
  } else if (f.kind === "storage") {
    // The fault lasts forMs and until the store has failed a few requests (the first upload may come late), ≤ 60 s.
    const before = proxy.counts[f.mode];
    proxy.mode = f.mode;
    const end = Date.now() + 60_000;
    await pause(f.forMs);
    while (proxy.counts[f.mode] - before < 3 && Date.now() < end) await pause(200);
    proxy.mode = "pass";
    faults = proxy.counts[f.mode] - before;
    if (faults === 0) throw new Error(`the store never met the ${f.mode} fault`);
  }

  const jobs = await poll(
    "every job to end",
    (all) => all.length === ids.length && all.every((j) => j && TERMINAL.has(j.status)) && all,
    Math.max(10_000, deadlineMs - (Date.now() - t0)),
  ).catch(() => snapshot());

  // Stop the runners gracefully (a job still in hand goes back), then read their logs; bounded, then killed.
  for (const r of runners) if (alive(r)) r.kill("SIGTERM");
  await Promise.race([
    Promise.all(runners.map((r) => (alive(r) ? new Promise((res) => r.once("exit", res)) : null))),
    pause(15_000),
  ]);
  for (const r of runners) if (alive(r)) r.kill("SIGKILL");
  if (process.env.FAULTS_LOGS) {
    mkdirSync(process.env.FAULTS_LOGS, { recursive: true });
    for (const [i, r] of runners.entries())
      writeFileSync(join(process.env.FAULTS_LOGS, `${s.name}-runner-${i + 1}.log`), r.output());
  }
  const log = events(runners);
  const count = (event: string, id: string) => log.filter((e) => e.event === event && e.job === id).length;

  const violations: string[] = [];
  for (const [i, job] of jobs.entries()) {
    const id = ids[i]!;
    if (!job) {
      violations.push(`${id}: lost (the edge does not know it)`);
      continue;
    }
    if (!TERMINAL.has(job.status)) violations.push(`${id}: not terminal (${job.status})`);
    const completions = count("job.done", id);
    if (completions > 1) violations.push(`${id}: completed ${completions} times`);
    if (job.status === "succeeded" && completions !== 1)
      violations.push(`${id}: succeeded with ${completions} completions logged`);
    if (job.attempts > count("job.start", id))
      violations.push(`${id}: ${job.attempts} attempts counted for ${count("job.start", id)} acknowledged starts`);
    if (s.allSucceed && job.status !== "succeeded")
      violations.push(`${id}: ${job.status} (${job.error?.code}) where every job must succeed`);
    if (job.status === "succeeded") {
      // The job itself (fresh signed URLs), once per succeeded job.
      const { images } = (await api(stack, "GET", `/v1/generations/${id}`, stack.apiKey)).body as {
        images: Array<{ index: number; url: string; sha256: string; size_bytes: number }>;
      };
      if (images.length !== job.request.n) violations.push(`${id}: ${images.length} images of ${job.request.n}`);
      for (const img of images) {
        const res = await fetch(img.url);
        const bytes = new Uint8Array(await res.arrayBuffer());
        const sha = createHash("sha256").update(bytes).digest("hex");
        if (!res.ok || sha !== img.sha256 || bytes.byteLength !== img.size_bytes)
          violations.push(
            `${id}: image ${img.index} downloads ${res.status}, sha256 ${sha.slice(0, 12)} (recorded ${img.sha256.slice(0, 12)})`,
          );
      }
    }
  }
  const ended = jobs.filter((j): j is Job => j !== undefined);
  return {
    scenario: s.name,
    jobs: ids.length,
    succeeded: ended.filter((j) => j.status === "succeeded").length,
    failed: ended.filter((j) => j.status === "failed").length,
    canceled: ended.filter((j) => j.status === "canceled").length,
    failures: ended.filter((j) => j.status === "failed").map((j) => j.error?.code ?? "?"),
    runnersStarted: runners.length,
    faults,
    attempts: ended.reduce((a, j) => a + j.attempts, 0),
    starts: ids.reduce((a, id) => a + count("job.start", id), 0),
    storageHandBacks: log.filter((e) => e.event === "job.failed" && e.code === "storage_unavailable").length,
    violations,
    seconds: Math.round((Date.now() - t0) / 100) / 10,
  };
}

/** The scenarios of `npm run test:faults`; the short run inside `npm test` takes two of them, smaller. */
export const SCENARIOS: Scenario[] = [
  { name: "sigkill", jobs: 10, runners: 3, fault: { kind: "kill", signal: "SIGKILL", count: 3 } },
  { name: "sigterm", jobs: 10, runners: 3, fault: { kind: "kill", signal: "SIGTERM", count: 3 } },
  { name: "sigstop-past-lease", jobs: 6, runners: 2, fault: { kind: "stop", pauseMs: 6_000 }, allSucceed: true },
  { name: "edge-restart", jobs: 6, runners: 2, fault: { kind: "edge-restart" } },
  ...(["503", "drop", "hang", "lie", "corrupt"] as const).map(
    (mode): Scenario => ({
      name: `storage-${mode}`,
      jobs: 6,
      runners: 2,
      fault: { kind: "storage", mode, forMs: 8_000 },
      allSucceed: true,
    }),
  ),
];
