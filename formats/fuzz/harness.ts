/**
 * The fuzz harness shared by the parsers' property tests (formats/src/*.fuzz.test.ts, gpu-runner's control images).
 * Bounded by default: a fixed seed and a run count that fits `npm test`. `npm run test:fuzz` sets FUZZ_RUNS (and
 * FUZZ_SECONDS per property, FUZZ_SEED or a random seed) and FUZZ_LOG, where each property appends one JSON line
 * (executions, seed, outcome) that scripts/fuzz-report.mjs turns into tests/fuzz/REPORT.md.
 */
import { appendFileSync } from "node:fs";
import fc from "fast-check";

const LONG = process.env.FUZZ_RUNS !== undefined;
/** One seed per process in a long run, so every property of one run can be replayed with FUZZ_SEED. */
const SEED =
  process.env.FUZZ_SEED !== undefined
    ? Number(process.env.FUZZ_SEED)
    : LONG
      ? Math.floor(Math.random() * 2 ** 31)
      : 20_260_301;

/** Slowest acceptable call: parsers are linear in their input, so a second on these inputs is a hang. */
export const MAX_CALL_MS = Number(process.env.FUZZ_MAX_CALL_MS ?? 2000);
/** Memory a call may keep beyond its input (the parsed value included): a header claiming 2^60 bytes must not get it. */
const allowedBytes = (inputBytes: number) => 64 * 2 ** 20 + 16 * inputBytes;

export interface FuzzRecord {
  suite: string;
  property: string;
  executions: number;
  seed: number;
  ms: number;
  failed: boolean;
  interrupted: boolean;
  counterexample?: string;
}

function record(suite: string, property: string, details: fc.RunDetails<unknown>, ms: number): void {
  const log = process.env.FUZZ_LOG;
  if (!log) return;
  const line: FuzzRecord = {
    suite,
    property,
    executions: details.numRuns,
    seed: details.seed,
    ms: Math.round(ms),
    failed: details.failed,
    interrupted: details.interrupted,
    ...(details.failed
      ? { counterexample: `${fc.defaultReportMessage(details) ?? ""}\n${String(details.errorInstance)}`.slice(0, 2000) }
      : {}),
  };
  appendFileSync(log, `${JSON.stringify(line)}\n`);
}

function parameters<T>(runs: number): fc.Parameters<T> {
  const seconds = Number(process.env.FUZZ_SECONDS ?? 0);
  return {
    seed: SEED,
    numRuns: LONG ? Number(process.env.FUZZ_RUNS) : runs,
    ...(LONG && seconds > 0 ? { interruptAfterTimeLimit: seconds * 1000 } : {}),
  };
}

function settle(suite: string, property: string, details: fc.RunDetails<unknown>, started: number): void {
  record(suite, property, details, performance.now() - started);
  if (details.failed)
    throw new Error(`${fc.defaultReportMessage(details)}\n${String(details.errorInstance)}`, {
      cause: details.errorInstance,
    });
}

/** Checks a property; `runs` is the bounded run's count (FUZZ_RUNS replaces it). */
export function fuzz<T>(
  suite: string,
  property: string,
  arb: fc.Arbitrary<T>,
  predicate: (value: T) => void,
  runs: number,
): void {
  const started = performance.now();
  settle(
    suite,
    property,
    fc.check(fc.property(arb, predicate), parameters<[T]>(runs)) as fc.RunDetails<unknown>,
    started,
  );
}

export async function fuzzAsync<T>(
  suite: string,
  property: string,
  arb: fc.Arbitrary<T>,
  predicate: (value: T) => Promise<void>,
  runs: number,
): Promise<void> {
  const started = performance.now();
  settle(
    suite,
    property,
    (await fc.check(fc.asyncProperty(arb, predicate), parameters<[T]>(runs))) as fc.RunDetails<unknown>,
    started,
  );
}

/** Vitest's limit for a property test: the bounded run's, or the long run's time per property and then some. */
export const fuzzTimeout = (boundedMs = 30_000) =>
  LONG ? Number(process.env.FUZZ_SECONDS ?? 600) * 1000 + 120_000 : boundedMs;

type ErrorClass = abstract new (...args: never[]) => Error;

const usedBytes = () => {
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
};

function bounded(inputBytes: number, started: number, before: number, what: string): void {
  const ms = performance.now() - started;
  if (ms > MAX_CALL_MS) throw new Error(`${what} took ${Math.round(ms)} ms on a ${inputBytes}-byte input`);
  const grew = usedBytes() - before;
  if (grew > allowedBytes(inputBytes)) throw new Error(`${what} kept ${grew} bytes for a ${inputBytes}-byte input`);
}

const foreign = (err: unknown, allowed: readonly ErrorClass[]) => !allowed.some((E) => err instanceof E);

/**
 * Runs a parser on hostile input: its value, or undefined when it refused with one of its own `errors`. Any other
 * exception (TypeError, RangeError, ...) propagates, as does a call over MAX_CALL_MS or one keeping too much memory.
 */
export function parses<T>(inputBytes: number, errors: readonly ErrorClass[], run: () => T): T | undefined {
  const before = usedBytes();
  const started = performance.now();
  let value: T | undefined;
  try {
    value = run();
  } catch (err) {
    if (foreign(err, errors)) throw err;
  }
  bounded(inputBytes, started, before, run.toString().slice(0, 80));
  return value;
}

export async function parsesAsync<T>(
  inputBytes: number,
  errors: readonly ErrorClass[],
  run: () => Promise<T>,
): Promise<T | undefined> {
  const before = usedBytes();
  const started = performance.now();
  let value: T | undefined;
  try {
    value = await run();
  } catch (err) {
    if (foreign(err, errors)) throw err;
  }
  bounded(inputBytes, started, before, run.toString().slice(0, 80));
  return value;
}

/** Integers at the edges of the widths formats store lengths in. */
const INTERESTING = [
  0,
  1,
  7,
  8,
  0x7f,
  0x80,
  0xff,
  0x100,
  0x7fff,
  0xffff,
  0x7fffffff,
  0x80000000,
  0xffffffff,
  2 ** 32,
  2 ** 53 - 1,
  2 ** 60,
  2 ** 63,
  2 ** 64 - 1,
];

type Mutation =
  | { kind: "byte"; at: number; value: number }
  | { kind: "int"; at: number; value: number; width: 1 | 2 | 4 | 8; littleEndian: boolean }
  | { kind: "insert"; at: number; bytes: Uint8Array }
  | { kind: "delete"; at: number; length: number }
  | { kind: "truncate"; at: number }
  | { kind: "copy"; from: number; to: number; length: number };

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({ kind: fc.constant("byte" as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      kind: fc.constant("int" as const),
      at: fc.nat(),
      value: fc.constantFrom(...INTERESTING),
      width: fc.constantFrom(1 as const, 2 as const, 4 as const, 8 as const),
      littleEndian: fc.boolean(),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant("insert" as const),
      at: fc.nat(),
      bytes: fc.uint8Array({ minLength: 1, maxLength: 64 }),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant("delete" as const),
      at: fc.nat(),
      length: fc.integer({ min: 1, max: 600 }),
    }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("truncate" as const), at: fc.nat() }) },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant("copy" as const),
      from: fc.nat(),
      to: fc.nat(),
      length: fc.integer({ min: 1, max: 600 }),
    }),
  },
);

function apply(bytes: Uint8Array, m: Mutation): Uint8Array {
  const n = bytes.byteLength;
  if (n === 0) return m.kind === "insert" ? m.bytes : bytes;
  const concat = (...parts: Uint8Array[]) => {
    const out = new Uint8Array(parts.reduce((s, p) => s + p.byteLength, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.byteLength;
    }
    return out;
  };
  switch (m.kind) {
    case "byte": {
      const out = bytes.slice();
      out[m.at % n] = m.value;
      return out;
    }
    case "int": {
      const out = bytes.slice();
      const at = m.at % n;
      const big = BigInt.asUintN(64, BigInt(m.value));
      for (let i = 0; i < m.width && at + i < n; i++) {
        const shift = BigInt(8 * (m.littleEndian ? i : m.width - 1 - i));
        out[at + i] = Number((big >> shift) & 0xffn);
      }
      return out;
    }
    case "insert":
      return concat(bytes.subarray(0, m.at % (n + 1)), m.bytes, bytes.subarray(m.at % (n + 1)));
    case "delete":
      return concat(bytes.subarray(0, m.at % n), bytes.subarray((m.at % n) + m.length));
    case "truncate":
      return bytes.slice(0, m.at % n);
    case "copy": {
      const from = m.from % n;
      return concat(bytes.subarray(0, m.to % n), bytes.subarray(from, from + m.length), bytes.subarray(m.to % n));
    }
  }
}

/** A valid file with 1–`max` random mutations (byte flips, edge integers, insertions, deletions, truncation, splices). */
export function mutated(valid: Uint8Array | fc.Arbitrary<Uint8Array>, max = 6): fc.Arbitrary<Uint8Array> {
  const base = valid instanceof Uint8Array ? fc.constant(valid) : valid;
  return fc
    .tuple(base, fc.array(mutation, { minLength: 1, maxLength: max }))
    .map(([bytes, ms]) => ms.reduce(apply, bytes));
}

/** Arbitrary bytes, short and long. */
export const anyBytes = (maxLength = 4096) => fc.uint8Array({ maxLength });
