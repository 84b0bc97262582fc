/**
 * The runner's side of the runner protocol (edge/src/runner-api): lease (long poll), heartbeat, complete, fail,
 * and uploads to the presigned URLs a lease hands out. Transient failures (network errors, 408, 429, 5xx) are
 * retried under the SDK's retry policy (`@imagegen/sdk/retry`: the server's Retry-After, else exponential backoff
 * with jitter), so a briefly unreachable or overloaded edge or store does not lose a job; answers that will not
 * change on retry (other 4xx) are returned to the caller as `EdgeError`s.
 */
import { isRetryableStatus, retryDelayMs, type Backoff } from "@imagegen/sdk/retry";
import { RunnerError } from "../errors.ts";
import type { z } from "zod";
import type {
  CompleteBody,
  FailBody,
  HeartbeatBody,
  HeartbeatResult,
  LeaseBody,
  LeasedJob as LeasedJobSchema,
  OutputUploadBody,
  OutputUploads,
} from "@imagegen/contracts/runner";

export type LeasedJob = z.infer<typeof LeasedJobSchema>;
export type LeaseRequest = z.input<typeof LeaseBody>;
export type Completion = z.input<typeof CompleteBody>;
export type Failure = z.input<typeof FailBody>;
export type Heartbeat = z.input<typeof HeartbeatBody>;
export type OutputUploadRequest = z.input<typeof OutputUploadBody>;
export type OutputUpload = z.infer<typeof OutputUploads>["uploads"][number];

export class EdgeError extends Error {
  override readonly name = "EdgeError";
  readonly status: number;
  readonly code: string;
  /** The answer's headers: its Retry-After sets the wait before the next attempt. */
  readonly headers: Headers | undefined;
  constructor(status: number, code: string, message: string, headers?: Headers) {
    super(message);
    this.status = status;
    this.code = code;
    this.headers = headers;
  }
}

export interface RetryPolicy extends Backoff {
  attempts: number;
}

export const DEFAULT_RETRY: RetryPolicy = { attempts: 8, baseMs: 200, maxMs: 5_000 };

/** Waits `ms`, or rejects with the signal's reason as soon as it aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** Why tries stopped: the policy's attempts ran out, or the deadline came first. */
export class RetriesExhausted extends Error {
  override readonly name = "RetriesExhausted";
}

/**
 * Runs `attempt` until it succeeds, a non-transient error, the policy's attempts run out or, with a `deadline`
 * (epoch ms), no further try could start before it. Aborting `signal` ends the wait between tries at once (and
 * `attempt` gets it, to end a try in flight).
 */
export async function withRetry<T>(
  what: string,
  attempt: () => Promise<T>,
  policy: RetryPolicy,
  signal?: AbortSignal,
  deadline = Number.POSITIVE_INFINITY,
): Promise<T> {
  let last: unknown;
  let tries = 0;
  while (tries < policy.attempts) {
    if (signal?.aborted) throw signal.reason;
    tries++;
    try {
      return await attempt();
    } catch (err) {
      if (signal?.aborted) throw signal.reason;
      if (err instanceof EdgeError && !isRetryableStatus(err.status)) throw err;
      last = err;
      if (tries === policy.attempts) break;
      const delay = retryDelayMs(tries - 1, err instanceof EdgeError ? err.headers : undefined, policy);
      if (Date.now() + delay >= deadline) {
        throw new RetriesExhausted(
          `${what} failed after ${tries} attempts (its deadline came): ${String((last as Error)?.message ?? last)}`,
          { cause: last },
        );
      }
      await sleep(delay, signal);
    }
  }
  throw new RetriesExhausted(`${what} failed after ${tries} attempts: ${String((last as Error)?.message ?? last)}`, {
    cause: last,
  });
}

/** The most one storage PUT may take: a hung store must not hold a runner for the whole lease on one try. */
export const UPLOAD_TRY_TIMEOUT_MS = 20_000;

export class EdgeClient {
  readonly baseUrl: string;
  private readonly token: string;
  private readonly retry: RetryPolicy;
  /**
   * Tests only (the fault suite): an origin that every storage request goes to instead of the URL's own, a proxy
   * that forwards it (as the signed host) or injects a fault.
   */
  private readonly storageProxy: string | undefined;
  constructor(baseUrl: string, token: string, retry: RetryPolicy = DEFAULT_RETRY, storageProxy?: string) {
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    this.token = token;
    this.retry = retry;
    this.storageProxy = storageProxy;
  }

  private viaProxy(url: string): string {
    if (!this.storageProxy) return url;
    const u = new URL(url);
    const proxy = new URL(this.storageProxy);
    u.protocol = proxy.protocol;
    u.host = proxy.host;
    return u.toString();
  }

  private async post<T>(
    path: string,
    body: unknown,
    timeoutMs = 30_000,
    signal?: AbortSignal,
  ): Promise<{ status: number; body: T | null }> {
    const timeout = AbortSignal.timeout(timeoutMs);
    const res = await fetch(`${this.baseUrl}${path}`, {
      method: "POST",
      headers: { authorization: `Bearer ${this.token}`, "content-type": "application/json" },
      body: JSON.stringify(body),
      signal: signal ? AbortSignal.any([timeout, signal]) : timeout,
    });
    const text = await res.text();
    const parsed = text ? (JSON.parse(text) as T & { error?: { code: string; message: string } }) : null;
    if (!res.ok) {
      const e = (parsed as { error?: { code: string; message: string } } | null)?.error;
      throw new EdgeError(res.status, e?.code ?? "http_error", e?.message ?? `${res.status} from ${path}`, res.headers);
    }
    return { status: res.status, body: parsed };
  }

  /** Set once an edge refused `max_jobs` (one older than the field): it is asked one job at a time from then on. */
  private oneJobPerLease = false;

  /**
   * Waits up to `wait_ms` for jobs: up to `max_jobs` of them (one without it); none when none came. Aborting `signal`
   * hangs up the long poll itself, so the edge hands the next job to a runner that is still there.
   */
  async lease(req: LeaseRequest, signal?: AbortSignal): Promise<LeasedJob[]> {
    const wait = req.wait_ms ?? 25_000;
    const { max_jobs, ...one } = req;
    const ask = max_jobs === undefined || this.oneJobPerLease ? one : req;
    let r: { status: number; body: LeasedJob | { jobs: LeasedJob[] } | null };
    try {
      r = await withRetry(
        "lease",
        () => this.post<LeasedJob | { jobs: LeasedJob[] }>("/internal/v1/lease", ask, wait + 15_000, signal),
        this.retry,
        signal,
      );
    } catch (err) {
      // An edge older than the field refuses it by name (`unknown_parameter`, as every unknown field).
      if (
        ask === req &&
        max_jobs !== undefined &&
        err instanceof EdgeError &&
        err.code === "unknown_parameter" &&
        /max_jobs/.test(err.message)
      ) {
        this.oneJobPerLease = true;
        return this.lease(one, signal);
      }
      throw err;
    }
    if (r.status === 204 || r.body === null) return [];
    return "jobs" in r.body ? r.body.jobs : [r.body];
  }

  async heartbeat(jobId: string, hb: Heartbeat): Promise<z.infer<typeof HeartbeatResult>> {
    return (
      await withRetry(
        "heartbeat",
        () => this.post<z.infer<typeof HeartbeatResult>>(`/internal/v1/jobs/${jobId}/heartbeat`, hb),
        { ...this.retry, attempts: 3 },
      )
    ).body!;
  }

  /** Upload URLs for the finished images, signed with each one's size and SHA-256 (and extending the lease). */
  async outputs(jobId: string, req: OutputUploadRequest): Promise<OutputUpload[]> {
    return (
      await withRetry(
        "outputs",
        () => this.post<z.infer<typeof OutputUploads>>(`/internal/v1/jobs/${jobId}/outputs`, req),
        this.retry,
      )
    ).body!.uploads;
  }

  async complete(jobId: string, c: Completion): Promise<void> {
    await withRetry("complete", () => this.post(`/internal/v1/jobs/${jobId}/complete`, c), this.retry);
  }

  async fail(jobId: string, f: Failure): Promise<void> {
    await withRetry("fail", () => this.post(`/internal/v1/jobs/${jobId}/fail`, f), this.retry);
  }

  /**
   * PUTs bytes to a presigned URL (the URL, not a credential, authorises exactly this object) with the headers it
   * was signed with. A body the store finds corrupted (BadDigest) is sent again. Tries stop at `deadline` (the URL's
   * expiry: after it no try can succeed), and each try is cut short by it, by `UPLOAD_TRY_TIMEOUT_MS`, or by
   * `signal` (cancel, a lost lease, shutdown). A store that failed throughout throws `StorageUnavailable`.
   */
  async upload(
    url: string,
    bytes: Uint8Array,
    headers: Record<string, string>,
    signal?: AbortSignal,
    deadline = Number.POSITIVE_INFINITY,
  ): Promise<void> {
    try {
      await withRetry(
        "upload",
        async () => {
          const budget = Math.max(1, Math.min(UPLOAD_TRY_TIMEOUT_MS, deadline - Date.now()));
          const timeout = AbortSignal.timeout(budget);
          const res = await fetch(this.viaProxy(url), {
            method: "PUT",
            body: bytes,
            headers,
            signal: signal ? AbortSignal.any([timeout, signal]) : timeout,
          });
          if (!res.ok) {
            const text = (await res.text()).slice(0, 200);
            if (text.includes("BadDigest")) throw new Error(`storage found the body corrupted: ${text}`);
            throw new EdgeError(res.status, "upload_failed", `storage answered ${res.status}: ${text}`, res.headers);
          }
          await res.body?.cancel();
        },
        this.retry,
        signal,
        deadline,
      );
    } catch (err) {
      if (signal?.aborted) throw err;
      // A refusal that will not change (403: a bad signature, 400: a bad request) is the runner's bug, not an outage.
      if (err instanceof EdgeError) throw err;
      throw new StorageUnavailable((err as Error).message, { cause: err });
    }
  }

  /**
   * Whether the store answers at all (any answer below 500 within a few seconds, a refusal included): the probe a
   * runner backing off from an outage makes before leasing again. `url` is one it could not write to.
   */
  async probeStorage(url: string, signal?: AbortSignal): Promise<boolean> {
    const timeout = AbortSignal.timeout(5_000);
    try {
      const res = await fetch(this.viaProxy(url), {
        method: "HEAD",
        signal: signal ? AbortSignal.any([timeout, signal]) : timeout,
      });
      await res.body?.cancel();
      return res.status < 500;
    } catch {
      return false;
    }
  }
}

/** The store failed (errors, hangs, timeouts) until the upload's deadline: hand the job back at no attempt's cost. */
export class StorageUnavailable extends RunnerError {
  constructor(message: string, options?: ErrorOptions) {
    super("storage_unavailable", message, options);
  }
}
