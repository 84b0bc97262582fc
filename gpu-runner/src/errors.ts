/**
 * The runner's one error type. Each failure carries a stable `code` (what the edge records on the job and shows the
 * tenant) and `retryable` (whether another attempt, perhaps on another runner, can succeed), decided where the error
 * is raised: the runner does not guess from class names. Errors that cross a worker_threads boundary keep both.
 */
import { SafetensorsError } from "@imagegen/formats/safetensors";
import { TarError } from "@imagegen/formats/tar";
import { FAILURE_CODES, type FailureCode } from "@imagegen/contracts/enums";

/** The failure codes are part of the runner API: declared once in contracts. */
export { FAILURE_CODES, type FailureCode };

export interface Failure {
  code: FailureCode;
  retryable: boolean;
}

export class RunnerError extends Error implements Failure {
  override name = "RunnerError";
  readonly code: FailureCode;
  readonly retryable: boolean;

  constructor(code: FailureCode, message: string, options?: ErrorOptions & { retryable?: boolean }) {
    super(message, options);
    this.code = code;
    this.retryable = options?.retryable ?? FAILURE_CODES[code];
  }

  /** An error from a module that knows no failure codes (a sampler, zod), given one; its name and message stay. */
  static wrap(err: Error, code: FailureCode): RunnerError {
    const wrapped = new RunnerError(code, err.message, { cause: err });
    wrapped.name = err.name;
    return wrapped;
  }
}

/**
 * The code and retryability of anything thrown: a RunnerError's own; a malformed add-on file (a safetensors or tar
 * reader's error, e.g. a non-finite value) fails the same way on every runner, so it is permanent; anything else is
 * an unforeseen (retryable) runner error.
 */
export function failureOf(err: unknown): Failure {
  if (err instanceof RunnerError) return { code: err.code, retryable: err.retryable };
  if (err instanceof SafetensorsError || err instanceof TarError)
    return { code: "addon_invalid", retryable: FAILURE_CODES.addon_invalid };
  return { code: "runner_error", retryable: FAILURE_CODES.runner_error };
}

/** A schema's complaints (zod issues) as lines a tenant can act on: where, and what is wrong there. */
export function describeIssues(issues: ReadonlyArray<{ path: ReadonlyArray<PropertyKey>; message: string }>): string[] {
  return issues.map((i) => `${i.path.map(String).join(".") || "(root)"}: ${i.message}`);
}

/** An error as it crosses a thread boundary: structured clone keeps no class, so the failure travels as fields. */
export interface WireError extends Failure {
  name: string;
  message: string;
}

export function toWire(err: unknown): WireError {
  const e = err instanceof Error ? err : new Error(String(err));
  return { name: e.name, message: e.message, ...failureOf(e) };
}

/** The error on this side of the boundary: a RunnerError with the original's name, message, code and retryability. */
export function fromWire(wire: WireError): RunnerError {
  const err = new RunnerError(wire.code, wire.message, { retryable: wire.retryable });
  err.name = wire.name;
  return err;
}
