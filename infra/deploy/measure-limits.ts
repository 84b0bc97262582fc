/**
 * Measures, on the local stack (wrangler dev: local D1, Durable Objects, R2 on 127.0.0.1), what bounds the edge's
 * queue: job creation (a D1 write transaction each), lease contention (the single guarded UPDATE that hands out a
 * job, under concurrent leasers), the Durable Object doorbell's fan-out to idle long polls, and the metrics scrape
 * against a deep queue. Writes infra/deploy/LIMITS.md (LIMITS_OUT overrides); SCALING.md reads it.
 *
 * Run from the root: `npx tsx infra/deploy/measure-limits.ts`. Bounded: a few hundred requests per part, ~1 minute.
 */
import { writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { api, startStack, type Stack } from "../../tests/e2e/stack.ts";

const MODEL_BODY = { prompt: "a large red circle on the left, blue background", n: 1 };

const q = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.ceil(p * s.length) - 1)]! : Number.NaN;
};
const ms = (x: number) => x.toFixed(1);

/** D1 time and statements of one answer, from its `Server-Timing` header (edge/src/middleware/server-timing.ts). */
function d1Of(headers: Headers): { ms: number; n: number } {
  const m = /(?:^|, )d1;dur=([\d.]+);desc="(\d+)x"/.exec(headers.get("server-timing") ?? "");
  return m ? { ms: Number(m[1]), n: Number(m[2]) } : { ms: 0, n: 0 };
}

/** Per request: D1 ms, statements, and D1 ms per statement, summed over the requests. */
function d1Summary(spans: Array<{ ms: number; n: number }>) {
  const ms = spans.reduce((a, s) => a + s.ms, 0);
  const n = spans.reduce((a, s) => a + s.n, 0);
  return `${(n / Math.max(1, spans.length)).toFixed(1)} statements, ${(ms / Math.max(1, spans.length)).toFixed(1)} ms in D1 (${(ms / Math.max(1, n)).toFixed(2)} ms each)`;
}

async function tenant(stack: Stack, name: string) {
  const t = await api(stack, "POST", "/admin/v1/tenants", stack.adminToken, {
    name,
    limits: { max_concurrent_jobs: 10_000, max_images_per_day: 10_000_000, rate_limit_per_minute: 1_000_000 },
  });
  const k = await api(stack, "POST", `/admin/v1/tenants/${t.body.id}/keys`, stack.adminToken, {});
  return k.body.secret as string;
}

async function runner(stack: Stack, name: string) {
  const r = await api(stack, "POST", "/admin/v1/runners", stack.adminToken, { name, capacity: 64 });
  return { id: r.body.id as string, token: r.body.token as string };
}

/** `total` creates by `clients` concurrent clients: creates per second and each create's latency. */
async function creates(stack: Stack, key: string, total: number, clients: number, model: string) {
  const lat: number[] = [];
  const d1: Array<{ ms: number; n: number }> = [];
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: clients }, async () => {
      while (next < total) {
        const i = next++;
        const s = performance.now();
        const r = await api(stack, "POST", "/v1/generations", key, {
          ...MODEL_BODY,
          model,
          seed: Math.floor(Math.random() * 1e9),
        });
        if (r.status !== 202) throw new Error(`create: ${r.status} ${JSON.stringify(r.body)}`);
        lat.push(performance.now() - s);
        d1.push(d1Of(r.headers));
      }
    }),
  );
  return {
    perSecond: (total / (performance.now() - t0)) * 1000,
    p50: q(lat, 0.5),
    p95: q(lat, 0.95),
    d1: d1Summary(d1),
  };
}

/**
 * Drains `queued` jobs with `leasers` concurrent lease loops (wait_ms 0). A runner holds at most 64 leases (the
 * most a runner may register), so each loop moves to a fresh runner token after 64.
 */
async function drain(stack: Stack, queued: number, leasers: number, model: string) {
  const perLeaser = Math.ceil(queued / 64) + 1;
  const made: Array<{ id: string; token: string }> = [];
  const lat: number[] = [];
  const d1: Array<{ ms: number; n: number }> = [];
  let got = 0;
  let empty = 0;
  const tokens = await Promise.all(
    Array.from({ length: leasers }, async (_, i) => {
      const own = [];
      for (let k = 0; k < perLeaser; k++) own.push(await runner(stack, `drain-${leasers}-${i}-${k}`));
      made.push(...own);
      return own;
    }),
  );
  const t0 = performance.now();
  await Promise.all(
    tokens.map(async (own) => {
      let held = 0;
      while (got < queued) {
        const token = own[Math.floor(held / 64)]!.token;
        const s = performance.now();
        const r = await api(stack, "POST", "/internal/v1/lease", token, { models: [model], wait_ms: 0, capacity: 64 });
        lat.push(performance.now() - s);
        d1.push(d1Of(r.headers));
        if (r.status === 200) got++, held++;
        else if (r.status === 204 && ++empty > 20 * leasers) return;
      }
    }),
  );
  const wall = performance.now() - t0;
  for (const t of made) await api(stack, "DELETE", `/admin/v1/runners/${t.id}`, stack.adminToken);
  return { perSecond: (got / wall) * 1000, p50: q(lat, 0.5), p95: q(lat, 0.95), got, d1: d1Summary(d1) };
}

/** `waiters` idle long polls; one job created: time from sending its create to a runner's lease answer. */
async function fanOut(stack: Stack, key: string, waiters: number, rounds: number, model: string) {
  const tokens = await Promise.all(Array.from({ length: waiters }, (_, i) => runner(stack, `bell-${waiters}-${i}`)));
  const wake: number[] = [];
  for (let round = 0; round < rounds; round++) {
    let answered = -1;
    const polls = tokens.map(async ({ token }) => {
      const r = await api(stack, "POST", "/internal/v1/lease", token, {
        models: [model],
        wait_ms: 4_000,
        capacity: 64,
      });
      if (r.status === 200 && answered < 0) answered = performance.now();
    });
    await new Promise((r) => setTimeout(r, 300)); // every poll is waiting
    const sent = performance.now();
    await api(stack, "POST", "/v1/generations", key, { ...MODEL_BODY, model, seed: 900_000 + round });
    await Promise.all(polls);
    if (answered > 0) wake.push(answered - sent);
  }
  for (const t of tokens) await api(stack, "DELETE", `/admin/v1/runners/${t.id}`, stack.adminToken);
  return { p50: q(wake, 0.5), max: Math.max(...wake), n: wake.length };
}

async function scrape(stack: Stack, times: number) {
  const lat: number[] = [];
  for (let i = 0; i < times; i++) {
    const s = performance.now();
    const r = await fetch(`${stack.edgeUrl}/admin/v1/metrics`, {
      headers: { authorization: `Bearer ${stack.adminToken}` },
    });
    await r.text();
    lat.push(performance.now() - s);
  }
  return { p50: q(lat, 0.5), p95: q(lat, 0.95) };
}

async function main() {
  const stack = await startStack({ runners: 0 });
  const lines: string[] = [];
  try {
    const model = stack.defaultModel;
    const key = await tenant(stack, "limits");
    const probe = await scrape(stack, 5);
    const idle = await (async () => {
      const s = performance.now();
      for (let i = 0; i < 20; i++) await (await fetch(`${stack.edgeUrl}/healthz`)).text();
      return (performance.now() - s) / 20;
    })();
    lines.push(`| empty Worker route (/healthz), sequential | | ${ms(idle)} | | |`);
    // First, on an empty queue of a model of its own: a queued job would answer a poll before any ring.
    const bellModel = stack.models.find((m) => m !== model) ?? model;
    for (const waiters of [1, 8, 32]) {
      const f = await fanOut(stack, key, waiters, 5, bellModel);
      lines.push(
        `| doorbell: create sent → first lease answer, ${waiters} idle long poll(s) (${f.n} rounds) | | ${ms(f.p50)} | max ${ms(f.max)} | |`,
      );
    }

    for (const clients of [1, 8, 32]) {
      const c = await creates(stack, key, 120, clients, model);
      lines.push(
        `| job creates, ${clients} client(s) | ${c.perSecond.toFixed(0)}/s | ${ms(c.p50)} | ${ms(c.p95)} | ${c.d1} |`,
      );
    }
    const deep = await scrape(stack, 10);
    lines.push(`| metrics scrape, empty queue | | ${ms(probe.p50)} | ${ms(probe.p95)} | |`);
    lines.push(`| metrics scrape, 360 jobs queued | | ${ms(deep.p50)} | ${ms(deep.p95)} | |`);

    for (const leasers of [1, 4, 16]) {
      if (leasers > 1) await creates(stack, key, 120, 8, model);
      const d = await drain(stack, 120, leasers, model);
      lines.push(
        `| lease calls, ${leasers} concurrent leaser(s), ${d.got} jobs leased | ${d.perSecond.toFixed(0)} jobs/s | ${ms(d.p50)} | ${ms(d.p95)} | ${d.d1} |`,
      );
    }
  } finally {
    await stack.stop();
  }
  const text = `# Measured limits of the local stack

\`npx tsx infra/deploy/measure-limits.ts\`, ${new Date().toISOString().slice(0, 16)}Z; load average at the end
${loadavg()
  .map((x) => x.toFixed(2))
  .join(" / ")} (2 cores shared with other work). wrangler dev on 127.0.0.1: local D1 (SQLite in workerd, no
network hop, one writer), local Durable Objects, no runner processes. What these numbers mean for production, and
what to do past them: SCALING.md.

| what | rate | p50 ms | p95 ms | D1 per request (Server-Timing) |
| --- | --- | --- | --- | --- |
${lines.join("\n")}
`;
  const out = process.env.LIMITS_OUT ?? join(import.meta.dirname, "LIMITS.md");
  writeFileSync(out, text);
  process.stdout.write(text);
}

await main();
