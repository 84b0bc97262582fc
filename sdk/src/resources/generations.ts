import type { Core, RequestOptions, WithRequestId } from "../core.ts";
import { GenerationFailedError } from "../errors.ts";
import { PagePromise } from "../pagination.ts";
import { followServerSentEvents } from "../streaming.ts";
import type {
  CreateGenerationParams,
  Generation,
  GenerationList,
  ListGenerationsParams,
  SignedImageUrl,
} from "../types.ts";

const TERMINAL = new Set(["succeeded", "failed", "canceled"]);

/** One event of a generation's stream: the whole generation, sent whenever its status or progress changes. */
export interface GenerationEvent {
  event: "generation";
  /** The event id, sent back as `Last-Event-ID` when the stream reconnects. */
  id: string;
  data: Generation;
}

export class Generations {
  private readonly core: Core;
  constructor(core: Core) {
    this.core = core;
  }

  /** Queues a generation; `wait` (seconds, ≤ 60) holds the answer until it ends (`Prefer: wait`). */
  async create(
    params: CreateGenerationParams,
    opts: RequestOptions & { wait?: number } = {},
  ): Promise<WithRequestId<Generation>> {
    const headers = opts.wait ? { prefer: `wait=${opts.wait}`, ...opts.headers } : opts.headers;
    const timeout = (opts.timeout ?? this.core.timeout) + (opts.wait ?? 0) * 1000;
    return (await this.core.request<Generation>("POST", "/v1/generations", { ...opts, headers, timeout, body: params }))
      .data;
  }

  /**
   * Creates a generation and resolves when it has succeeded, waiting on the server (`Prefer: wait`) in rounds;
   * throws GenerationFailedError when it fails or is canceled.
   */
  async createAndWait(
    params: CreateGenerationParams,
    opts: RequestOptions & { timeoutSeconds?: number } = {},
  ): Promise<WithRequestId<Generation>> {
    const deadline = Date.now() + (opts.timeoutSeconds ?? 300) * 1000;
    let g = await this.create(params, { ...opts, wait: Math.min(60, opts.timeoutSeconds ?? 60) });
    while (!TERMINAL.has(g.status) && Date.now() < deadline) {
      g = await this.get(g.id, opts);
      if (!TERMINAL.has(g.status)) await new Promise((r) => setTimeout(r, 250));
    }
    if (g.status !== "succeeded") {
      throw new GenerationFailedError(
        g.id,
        g.error?.code ?? g.status,
        g.error?.message ?? `generation ${g.id} is ${g.status}`,
      );
    }
    return g;
  }

  async get(id: string, opts: RequestOptions = {}): Promise<WithRequestId<Generation>> {
    return (await this.core.request<Generation>("GET", `/v1/generations/${encodeURIComponent(id)}`, opts)).data;
  }

  /** A page of generations, newest first; iterate it (`for await`) for every generation, page after page. */
  list(
    params: Omit<ListGenerationsParams, "after"> & { after?: string } = {},
    opts: RequestOptions = {},
  ): PagePromise<GenerationList> {
    return new PagePromise(async (after) => {
      const query = { ...params, ...(after ? { after } : {}) };
      return (await this.core.request<GenerationList>("GET", "/v1/generations", { ...opts, query })).data;
    });
  }

  /** Every generation, newest first (the same as iterating `list`). */
  iterate(params: Omit<ListGenerationsParams, "after"> = {}, opts: RequestOptions = {}): AsyncIterable<Generation> {
    return this.list(params, opts);
  }

  /**
   * Follows a generation as server-sent events until its final state. A dropped connection is reopened with
   * `Last-Event-ID`, so the stream goes on where it broke (`maxRetries` reconnects in a row, default 5).
   */
  async *stream(id: string, opts: RequestOptions = {}): AsyncGenerator<GenerationEvent> {
    const path = `/v1/generations/${encodeURIComponent(id)}/events`;
    const isLast = (e: { event: string; data: string }) =>
      e.event === "generation" && TERMINAL.has((JSON.parse(e.data) as Generation).status);
    let lastId: string | undefined;
    for await (const e of followServerSentEvents(this.core, path, isLast, opts)) {
      // A server that resends the event a reconnect named as the last one received would duplicate it.
      if (e.event !== "generation" || (e.id && e.id === lastId)) continue;
      lastId = e.id;
      yield { event: "generation", id: e.id, data: JSON.parse(e.data) as Generation };
    }
  }

  /** The generation at every change of status or progress, ending with its final state (`stream`'s data). */
  async *events(id: string, opts: RequestOptions = {}): AsyncGenerator<Generation> {
    for await (const e of this.stream(id, opts)) yield e.data;
  }

  async cancel(id: string, opts: RequestOptions = {}): Promise<WithRequestId<Generation>> {
    return (await this.core.request<Generation>("POST", `/v1/generations/${encodeURIComponent(id)}/cancel`, opts)).data;
  }

  /** A fresh signed URL for an image, valid for `expiresInSeconds`. */
  async signImageUrl(
    id: string,
    index: number,
    expiresInSeconds = 3600,
    opts: RequestOptions = {},
  ): Promise<WithRequestId<SignedImageUrl>> {
    const path = `/v1/generations/${encodeURIComponent(id)}/images/${index}/url`;
    return (
      await this.core.request<SignedImageUrl>("POST", path, { ...opts, body: { expires_in_seconds: expiresInSeconds } })
    ).data;
  }
}
