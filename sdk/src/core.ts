/**
 * The HTTP core: base URL, API key, default headers, timeouts, retries (network errors and the statuses of the
 * shared policy in retry.ts, with backoff that honours `Retry-After`), and an idempotency key on
 * every POST so a retried create never makes a second job. Runs on Node, browsers and Workers (global fetch).
 */
import { APIConnectionError, APITimeoutError, APIUserAbortError, ImageGenError, makeError } from "./errors.ts";
import { isRetryableStatus, retryDelayMs } from "./retry.ts";
import type { ErrorBody } from "./types.ts";

export interface ClientOptions {
  /** Defaults to the IMAGEGEN_API_KEY environment variable where there is one. */
  apiKey?: string;
  /** Defaults to IMAGEGEN_BASE_URL, else http://127.0.0.1:8787. */
  baseURL?: string;
  /** Per request, in ms (default 60 s; a request waiting for a job adds its wait). Every call honours it. */
  timeout?: number;
  /** Retries of a failed request (default 2). */
  maxRetries?: number;
  defaultHeaders?: Record<string, string>;
  /** Used for every request, the storage uploads and event streams included. */
  fetch?: typeof fetch;
}

export interface RequestOptions {
  query?: Record<string, string | number | undefined>;
  body?: unknown;
  headers?: Record<string, string>;
  idempotencyKey?: string;
  timeout?: number;
  maxRetries?: number;
  signal?: AbortSignal;
}

/** What every answer of the API carries besides its body: the server's `X-Request-Id`, to quote in support requests. */
export type WithRequestId<T> = T & { readonly _request_id?: string | undefined };

const env = (name: string): string | undefined =>
  (globalThis as { process?: { env?: Record<string, string | undefined> } }).process?.env?.[name];

/** Puts the request id on an answer without making it part of the data (not enumerable, not serialized). */
export function withRequestId<T>(data: T, headers: Headers): WithRequestId<T> {
  if (data !== null && typeof data === "object") {
    Object.defineProperty(data, "_request_id", {
      value: headers.get("x-request-id") ?? undefined,
      enumerable: false,
      configurable: true,
    });
  }
  return data as WithRequestId<T>;
}

const isErrorBody = (body: unknown): body is ErrorBody =>
  typeof (body as ErrorBody | undefined)?.error === "object" && typeof (body as ErrorBody).error?.message === "string";

/** The API's error for a failed answer; the URL names the server when the answer is not the API's envelope. */
export async function errorOf(res: Response, url: URL | string): Promise<Error> {
  const body: unknown = await res.json().catch(() => undefined);
  return makeError(res.status, isErrorBody(body) ? body : undefined, res.headers, String(url));
}

export class Core {
  readonly baseURL: string;
  /** The client-level timeout in ms; calls that wait for a job add their wait to it. */
  readonly timeout: number;
  readonly fetch: typeof fetch;
  private readonly apiKey: string;
  private readonly maxRetries: number;
  private readonly defaultHeaders: Record<string, string>;

  constructor(options: ClientOptions = {}) {
    const apiKey = options.apiKey ?? env("IMAGEGEN_API_KEY");
    if (!apiKey) throw new Error("imagegen: an API key is required (options.apiKey or IMAGEGEN_API_KEY)");
    this.apiKey = apiKey;
    this.baseURL = (options.baseURL ?? env("IMAGEGEN_BASE_URL") ?? "http://127.0.0.1:8787").replace(/\/+$/, "");
    this.timeout = options.timeout ?? 60_000;
    this.maxRetries = options.maxRetries ?? 2;
    this.defaultHeaders = options.defaultHeaders ?? {};
    this.fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  /**
   * One fetch under a timeout and the caller's signal, with its failure told apart: APITimeoutError when the time
   * ran out, APIUserAbortError when the caller aborted, APIConnectionError (naming the URL) otherwise. The timeout
   * covers the answer's headers and, unless `release` is called, the reading of its body.
   */
  async send(
    url: URL | string,
    init: RequestInit,
    opts: { timeout?: number; signal?: AbortSignal | undefined },
  ): Promise<{ res: Response; release: () => void }> {
    const timeoutMs = opts.timeout ?? this.timeout;
    const timer = new AbortController();
    const handle = setTimeout(
      () => timer.abort(new APITimeoutError(`no answer from ${url} within ${timeoutMs} ms`)),
      timeoutMs,
    );
    const signal = opts.signal ? AbortSignal.any([opts.signal, timer.signal]) : timer.signal;
    const release = () => clearTimeout(handle);
    try {
      return { res: await this.fetch(url, { ...init, signal }), release };
    } catch (err) {
      release();
      if (opts.signal?.aborted) throw new APIUserAbortError(undefined, { cause: err });
      if (timer.signal.aborted) throw timer.signal.reason as APITimeoutError;
      throw new APIConnectionError(`could not reach ${url}: ${(err as Error).message} (is the base URL right?)`, {
        cause: err,
      });
    }
  }

  private headers(accept: string, opts: RequestOptions): Record<string, string> {
    return { authorization: `Bearer ${this.apiKey}`, accept, ...this.defaultHeaders, ...opts.headers };
  }

  /** A GET whose answer is read as a stream (server-sent events); the timeout covers the wait for its headers only. */
  async stream(
    path: string,
    opts: RequestOptions = {},
  ): Promise<{ body: ReadableStream<Uint8Array>; headers: Headers }> {
    const url = new URL(this.baseURL + path);
    const { res, release } = await this.send(url, { headers: this.headers("text/event-stream", opts) }, opts);
    release();
    if (!res.ok || !res.body) throw await errorOf(res, url);
    return { body: res.body, headers: res.headers };
  }

  async request<T>(
    method: string,
    path: string,
    opts: RequestOptions = {},
  ): Promise<{ data: WithRequestId<T>; headers: Headers; status: number; requestId: string | undefined }> {
    const url = new URL(this.baseURL + path);
    for (const [k, v] of Object.entries(opts.query ?? {})) if (v !== undefined) url.searchParams.set(k, String(v));
    const headers = this.headers("application/json", opts);
    if (opts.body !== undefined) headers["content-type"] = "application/json";
    if (method === "POST")
      headers["idempotency-key"] = opts.idempotencyKey ?? headers["idempotency-key"] ?? crypto.randomUUID();
    const maxRetries = opts.maxRetries ?? this.maxRetries;
    for (let attempt = 0; ; attempt++) {
      let answer: { res: Response; release: () => void };
      try {
        answer = await this.send(
          url,
          { method, headers, body: opts.body === undefined ? undefined : JSON.stringify(opts.body) },
          opts,
        );
      } catch (err) {
        if (err instanceof APIConnectionError && attempt < maxRetries) {
          await sleep(retryDelayMs(attempt));
          continue;
        }
        throw err;
      }
      const { res, release } = answer;
      try {
        if (res.ok) {
          const data = withRequestId(parseJson<T>(await res.text(), url), res.headers);
          return {
            data,
            headers: res.headers,
            status: res.status,
            requestId: res.headers.get("x-request-id") ?? undefined,
          };
        }
        if (isRetryableStatus(res.status) && attempt < maxRetries) {
          await res.body?.cancel();
          await sleep(retryDelayMs(attempt, res.headers));
          continue;
        }
        throw await errorOf(res, url);
      } catch (err) {
        // The body is read under the same timeout and signal as the headers.
        if (err instanceof ImageGenError) throw err;
        if (opts.signal?.aborted) throw new APIUserAbortError(undefined, { cause: err });
        throw new APIConnectionError(`reading the answer of ${url} failed: ${(err as Error).message}`, { cause: err });
      } finally {
        release();
      }
    }
  }
}

function parseJson<T>(text: string, url: URL): T {
  try {
    return (text ? JSON.parse(text) : null) as T;
  } catch {
    throw new APIConnectionError(`the answer of ${url} is not JSON: not the imagegen API (is the base URL right?)`);
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
