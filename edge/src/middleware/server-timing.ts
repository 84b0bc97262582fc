/**
 * Where a request's time goes: every answer carries a `Server-Timing` header (W3C Server Timing) with the time spent
 * in D1, in Durable Object calls (doorbells, rate limiter), in object storage and in named steps of the handler, and
 * the whole. With `TIMING_LOG = "true"` the edge also logs one JSON line per request (`{"server_timing": …}`) with
 * the job it concerned and epoch timestamps of named moments, which the latency bench (tests/bench/latency.ts) joins
 * into the stages of one generation. A request's timing is found through AsyncLocalStorage, so the code it measures
 * (the D1 wrapper, the doorbells, the store) needs no parameter for it.
 */
import { AsyncLocalStorage } from "node:async_hooks";
import type { MiddlewareHandler } from "hono";
import type { AppEnv } from "../context.ts";

export class RequestTiming {
  readonly start = Date.now();
  readonly spans = new Map<string, { ms: number; n: number }>();
  /** Epoch ms of named moments (e.g. "inserted", "woken", "leased"), the last time each happened. */
  readonly marks: Record<string, number> = {};
  job?: string;

  add(name: string, ms: number): void {
    const s = this.spans.get(name);
    if (s) {
      s.ms += ms;
      s.n++;
    } else this.spans.set(name, { ms, n: 1 });
  }

  /** The `Server-Timing` header: each span's total, with how many calls made it, then the whole request. */
  header(end = Date.now()): string {
    const parts = [...this.spans].map(([name, s]) => `${name};dur=${s.ms};desc="${s.n}x"`);
    parts.push(`total;dur=${end - this.start}`);
    return parts.join(", ");
  }
}

const current = new AsyncLocalStorage<RequestTiming>();

/** The timing of the request this code runs for, if any (none in cron or Durable Object code). */
export const requestTiming = (): RequestTiming | undefined => current.getStore();

/** Runs `fn`, adding its duration to the span `name` of the current request. */
export async function timed<T>(name: string, fn: () => Promise<T>): Promise<T> {
  const t = current.getStore();
  if (!t) return fn();
  const t0 = Date.now();
  try {
    return await fn();
  } finally {
    t.add(name, Date.now() - t0);
  }
}

/** Records that `name` happened now (the last time counts), and which job the request concerns. */
export function mark(name: string, jobId?: string): void {
  const t = current.getStore();
  if (!t) return;
  t.marks[name] = Date.now();
  if (jobId) t.job ??= jobId;
}

const INNER = Symbol("inner");
const RUNS = new Set(["first", "run", "all", "raw"]);

function timedStatement(stmt: D1PreparedStatement): D1PreparedStatement {
  return new Proxy(stmt, {
    get(target, prop) {
      if (prop === INNER) return target;
      if (prop === "bind") return (...values: unknown[]) => timedStatement(target.bind(...values));
      const value = Reflect.get(target, prop, target);
      if (typeof prop === "string" && RUNS.has(prop) && typeof value === "function")
        return (...args: unknown[]) => timed("d1", () => value.apply(target, args));
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

/** The D1 binding with every query and batch timed into the current request's `d1` span (one round trip each). */
export function timedD1(d1: D1Database): D1Database {
  return new Proxy(d1, {
    get(target, prop) {
      if (prop === "prepare") return (query: string) => timedStatement(target.prepare(query));
      if (prop === "batch") {
        return (statements: D1PreparedStatement[]) =>
          timed("d1", () =>
            target.batch(statements.map((s) => (s as unknown as Record<symbol, D1PreparedStatement>)[INNER] ?? s)),
          );
      }
      const value = Reflect.get(target, prop, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

/** Measures the request (see the module comment); the first middleware after the request id. */
export const serverTiming = (): MiddlewareHandler<AppEnv> => async (c, next) => {
  const t = new RequestTiming();
  await current.run(t, next);
  const end = Date.now();
  try {
    c.res.headers.set("Server-Timing", t.header(end));
  } catch {
    // An answer passed through with immutable headers (a static asset) goes without.
  }
  if (c.env.TIMING_LOG === "true") {
    const spans = Object.fromEntries([...t.spans].map(([k, s]) => [k, { ms: s.ms, n: s.n }]));
    console.log(
      JSON.stringify({
        server_timing: {
          method: c.req.method,
          path: c.req.path,
          status: c.res.status,
          job: t.job,
          start: t.start,
          end,
          marks: t.marks,
          spans,
        },
      }),
    );
  }
};
