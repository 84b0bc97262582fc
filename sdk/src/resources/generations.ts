import { readServerSentEvents, type Core, type RequestOptions } from "../core.ts";
import { GenerationFailedError } from "../errors.ts";
import type { CreateGenerationParams, Generation, GenerationList, ListGenerationsParams, SignedImageUrl } from "../types.ts";

const TERMINAL = new Set(["succeeded", "failed", "canceled"]);

export class Generations {
  private readonly core: Core;
  constructor(core: Core) {
    this.core = core;
  }

  /** Queues a generation; `wait` (seconds, ≤ 60) holds the answer until it ends (`Prefer: wait`). */
  async create(params: CreateGenerationParams, opts: RequestOptions & { wait?: number } = {}): Promise<Generation> {
    const headers = opts.wait ? { prefer: `wait=${opts.wait}`, ...opts.headers } : opts.headers;
    const timeout = (opts.timeout ?? 60_000) + (opts.wait ?? 0) * 1000;
    return (await this.core.request<Generation>("POST", "/v1/generations", { ...opts, headers, timeout, body: params })).data;
  }

  /**
   * Creates a generation and resolves when it has succeeded, waiting on the server (`Prefer: wait`) in rounds;
   * throws GenerationFailedError when it fails or is canceled.
   */
  async createAndWait(params: CreateGenerationParams, opts: RequestOptions & { timeoutSeconds?: number } = {}): Promise<Generation> {
    const deadline = Date.now() + (opts.timeoutSeconds ?? 300) * 1000;
    let g = await this.create(params, { ...opts, wait: Math.min(60, opts.timeoutSeconds ?? 60) });
    while (!TERMINAL.has(g.status) && Date.now() < deadline) {
      g = await this.get(g.id, opts);
      if (!TERMINAL.has(g.status)) await new Promise((r) => setTimeout(r, 250));
    }
    if (g.status !== "succeeded") {
      throw new GenerationFailedError(g.id, g.error?.code ?? g.status, g.error?.message ?? `generation ${g.id} is ${g.status}`);
    }
    return g;
  }

  async get(id: string, opts: RequestOptions = {}): Promise<Generation> {
    return (await this.core.request<Generation>("GET", `/v1/generations/${encodeURIComponent(id)}`, opts)).data;
  }

  async list(params: ListGenerationsParams = {}, opts: RequestOptions = {}): Promise<GenerationList> {
    return (await this.core.request<GenerationList>("GET", "/v1/generations", { ...opts, query: { ...params } })).data;
  }

  /** Every generation, newest first, following the cursor page by page. */
  async *iterate(params: Omit<ListGenerationsParams, "after"> = {}, opts: RequestOptions = {}): AsyncGenerator<Generation> {
    let after: string | undefined;
    do {
      const page = await this.list({ ...params, ...(after ? { after } : {}) }, opts);
      yield* page.data;
      after = page.next_cursor ?? undefined;
    } while (after);
  }

  /** Follows a generation: yields it at every change of status or progress, ending with its final state. */
  async *events(id: string, opts: RequestOptions = {}): AsyncGenerator<Generation> {
    for await (const e of readServerSentEvents(await this.core.stream(`/v1/generations/${encodeURIComponent(id)}/events`, opts))) {
      if (e.event === "generation") yield JSON.parse(e.data) as Generation;
    }
  }

  async cancel(id: string, opts: RequestOptions = {}): Promise<Generation> {
    return (await this.core.request<Generation>("POST", `/v1/generations/${encodeURIComponent(id)}/cancel`, opts)).data;
  }

  /** A fresh signed URL for an image, valid for `expiresInSeconds`. */
  async signImageUrl(id: string, index: number, expiresInSeconds = 3600, opts: RequestOptions = {}): Promise<SignedImageUrl> {
    return (await this.core.request<SignedImageUrl>("POST", `/v1/generations/${encodeURIComponent(id)}/images/${index}/url`, { ...opts, body: { expires_in_seconds: expiresInSeconds } })).data;
  }
}
