/**
 * The HTTP core: base URL, API key, default headers, timeouts, retries (network errors and the statuses of the
 * shared policy in retry.ts, with backoff that honours `Retry-After`), and an idempotency key on
 * every POST so a retried create never makes a second job. Runs on Node, browsers and Workers (global fetch).
 */
import { APIConnectionError, makeError } from "./errors.ts";
import { isRetryableStatus, retryDelayMs } from "./retry.ts";
import type { ErrorBody } from "./types.ts";

export interface ClientOptions {
  /** Defaults to the IMAGEGEN_API_KEY environment variable where there is one. */
  apiKey?: string;
  /** Defaults to IMAGEGEN_BASE_URL, else http://127.0.0.1:8787. */
  baseURL?: string;
  /** Per request, in ms (default 60 s; a request waiting for a job adds its wait). */
  timeout?: number;
  /** Retries of a failed request (default 2). */
  maxRetries?: number;
  defaultHeaders?: Record<string, string>;
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

const env = (name: string): string | undefined => (globalThis as { process?: { env?: Record<string, string | undefined> } }).process?.env?.[name];

export class Core {
  readonly baseURL: string;
  private readonly apiKey: string;
  private readonly timeout: number;
  private readonly maxRetries: number;
  private readonly defaultHeaders: Record<string, string>;
  private readonly fetchImpl: typeof fetch;

  constructor(options: ClientOptions = {}) {
    const apiKey = options.apiKey ?? env("IMAGEGEN_API_KEY");
    if (!apiKey) throw new Error("imagegen: an API key is required (options.apiKey or IMAGEGEN_API_KEY)");
    this.apiKey = apiKey;
    this.baseURL = (options.baseURL ?? env("IMAGEGEN_BASE_URL") ?? "http://127.0.0.1:8787").replace(/\/+$/, "");
    this.timeout = options.timeout ?? 60_000;
    this.maxRetries = options.maxRetries ?? 2;
    this.defaultHeaders = options.defaultHeaders ?? {};
    this.fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  /** A GET whose answer is read as a stream (server-sent events); errors are thrown as for `request`. */
  async stream(path: string, opts: RequestOptions = {}): Promise<ReadableStream<Uint8Array>> {
    const res = await this.fetchImpl(new URL(this.baseURL + path), {
      headers: { authorization: `Bearer ${this.apiKey}`, accept: "text/event-stream", ...this.defaultHeaders, ...opts.headers },
      ...(opts.signal ? { signal: opts.signal } : {}),
    }).catch((err: Error) => {
      throw new APIConnectionError(`request to ${path} failed: ${err.message}`, { cause: err });
    });
    if (!res.ok) throw makeError(res.status, (await res.json().catch(() => undefined)) as ErrorBody | undefined, res.headers);
    return res.body!;
  }

  async request<T>(method: string, path: string, opts: RequestOptions = {}): Promise<{ data: T; headers: Headers; status: number }> {
    const url = new URL(this.baseURL + path);
    for (const [k, v] of Object.entries(opts.query ?? {})) if (v !== undefined) url.searchParams.set(k, String(v));
    const headers: Record<string, string> = {
      authorization: `Bearer ${this.apiKey}`,
      accept: "application/json",
      ...this.defaultHeaders,
      ...opts.headers,
    };
    if (opts.body !== undefined) headers["content-type"] = "application/json";
    if (method === "POST") headers["idempotency-key"] = opts.idempotencyKey ?? headers["idempotency-key"] ?? crypto.randomUUID();
    const maxRetries = opts.maxRetries ?? this.maxRetries;
    for (let attempt = 0; ; attempt++) {
      const timeout = AbortSignal.timeout(opts.timeout ?? this.timeout);
      const signal = opts.signal ? AbortSignal.any([opts.signal, timeout]) : timeout;
      let res: Response;
      try {
        res = await this.fetchImpl(url, { method, headers, body: opts.body === undefined ? undefined : JSON.stringify(opts.body), signal });
      } catch (err) {
        if (opts.signal?.aborted) throw err;
        if (attempt < maxRetries) {
          await sleep(retryDelayMs(attempt));
          continue;
        }
        throw new APIConnectionError(`request to ${url.pathname} failed: ${(err as Error).message}`, { cause: err });
      }
      if (res.ok) {
        const text = await res.text();
        return { data: (text ? JSON.parse(text) : null) as T, headers: res.headers, status: res.status };
      }
      if (isRetryableStatus(res.status) && attempt < maxRetries) {
        await res.body?.cancel();
        await sleep(retryDelayMs(attempt, res.headers));
        continue;
      }
      const body = (await res.json().catch(() => undefined)) as ErrorBody | undefined;
      throw makeError(res.status, body, res.headers);
    }
  }
}

/** Parses a server-sent event stream into (event, data) pairs. */
export async function* readServerSentEvents(body: ReadableStream<Uint8Array>): AsyncGenerator<{ event: string; data: string }> {
  const reader = body.pipeThrough(new TextDecoderStream() as unknown as TransformStream<Uint8Array, string>).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      buffer += value;
      let cut: number;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let event = "message";
        const data: string[] = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
        }
        if (data.length) yield { event, data: data.join("\n") };
      }
    }
  } finally {
    reader.releaseLock();
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
