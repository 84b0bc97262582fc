/**
 * The runner's side of the runner protocol (edge/src/runner-api): lease (long poll), heartbeat, complete, fail,
 * and uploads to the presigned URLs a lease hands out. Transient failures (network errors, 408, 429, 5xx) are
 * retried under the SDK's retry policy (`@imagegen/sdk/retry`: the server's Retry-After, else exponential backoff
 * with jitter), so a briefly unreachable or overloaded edge or store does not lose a job; answers that will not
 * change on retry (other 4xx) are returned to the caller as `EdgeError`s.
 */
import { isRetryableStatus, retryDelayMs, type Backoff } from "@imagegen/sdk/retry";
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

/** Runs `attempt` until it succeeds, a non-transient error, or the policy's attempts run out. */
export async function withRetry<T>(what: string, attempt: () => Promise<T>, policy: RetryPolicy, signal?: AbortSignal): Promise<T> {
  let last: unknown;
  for (let i = 0; i < policy.attempts; i++) {
    if (signal?.aborted) throw signal.reason;
    try {
      return await attempt();
    } catch (err) {
      if (err instanceof EdgeError && !isRetryableStatus(err.status)) throw err;
      last = err;
      if (i + 1 === policy.attempts) break;
      const delay = retryDelayMs(i, err instanceof EdgeError ? err.headers : undefined, policy);
      await new Promise((r) => setTimeout(r, delay));
    }
  }
  throw new Error(`${what} failed after ${policy.attempts} attempts: ${String((last as Error)?.message ?? last)}`);
}

export class EdgeClient {
  readonly baseUrl: string;
  private readonly token: string;
  private readonly retry: RetryPolicy;
  constructor(baseUrl: string, token: string, retry: RetryPolicy = DEFAULT_RETRY) {
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    this.token = token;
    this.retry = retry;
  }

  private async post<T>(path: string, body: unknown, timeoutMs = 30_000, signal?: AbortSignal): Promise<{ status: number; body: T | null }> {
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

  /**
   * Waits up to `wait_ms` for a job; null when none came. Aborting `signal` hangs up the long poll itself, so the
   * edge hands the next job to a runner that is still there.
   */
  async lease(req: LeaseRequest, signal?: AbortSignal): Promise<LeasedJob | null> {
    const wait = req.wait_ms ?? 25_000;
    const r = await withRetry("lease", () => this.post<LeasedJob>("/internal/v1/lease", req, wait + 15_000, signal), this.retry, signal);
    return r.status === 204 ? null : r.body;
  }

  async heartbeat(jobId: string, hb: Heartbeat): Promise<z.infer<typeof HeartbeatResult>> {
    return (await withRetry("heartbeat", () => this.post<z.infer<typeof HeartbeatResult>>(`/internal/v1/jobs/${jobId}/heartbeat`, hb), { ...this.retry, attempts: 3 })).body!;
  }

  /** Upload URLs for the finished images, signed with each one's size and SHA-256 (and extending the lease). */
  async outputs(jobId: string, req: OutputUploadRequest): Promise<OutputUpload[]> {
    return (await withRetry("outputs", () => this.post<z.infer<typeof OutputUploads>>(`/internal/v1/jobs/${jobId}/outputs`, req), this.retry)).body!.uploads;
  }

  async complete(jobId: string, c: Completion): Promise<void> {
    await withRetry("complete", () => this.post(`/internal/v1/jobs/${jobId}/complete`, c), this.retry);
  }

  async fail(jobId: string, f: Failure): Promise<void> {
    await withRetry("fail", () => this.post(`/internal/v1/jobs/${jobId}/fail`, f), this.retry);
  }

  /**
   * PUTs bytes to a presigned URL (the URL, not a credential, authorises exactly this object) with the headers it
   * was signed with. A body the store finds corrupted (BadDigest) is sent again.
   */
  async upload(url: string, bytes: Uint8Array, headers: Record<string, string>, signal?: AbortSignal): Promise<void> {
    await withRetry(
      "upload",
      async () => {
        const res = await fetch(url, { method: "PUT", body: bytes, headers, signal: AbortSignal.timeout(60_000) });
        if (!res.ok) {
          const text = (await res.text()).slice(0, 200);
          if (text.includes("BadDigest")) throw new Error(`storage found the body corrupted: ${text}`);
          throw new EdgeError(res.status, "upload_failed", `storage answered ${res.status}: ${text}`, res.headers);
        }
      },
      this.retry,
      signal,
    );
  }
}
