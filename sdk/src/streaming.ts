/**
 * Server-sent events: the parser (event, data, id, retry fields of the WHATWG format) and a stream that
 * reconnects with `Last-Event-ID` when the connection drops before the server ended it, so no event is lost.
 */
import type { Core, RequestOptions } from "./core.ts";
import { APIConnectionError, APIError, APIUserAbortError } from "./errors.ts";
import { retryDelayMs } from "./retry.ts";

export interface ServerSentEvent {
  event: string;
  data: string;
  /** The event's `id:` (what a reconnect sends as `Last-Event-ID`), "" when it had none. */
  id: string;
  /** A `retry:` field: the reconnection delay the server asks for, in ms. */
  retry?: number;
}

/** Parses a server-sent event stream; comment lines (keep-alives) are skipped. */
export async function* readServerSentEvents(body: ReadableStream<Uint8Array>): AsyncGenerator<ServerSentEvent> {
  const reader = body
    .pipeThrough(new TextDecoderStream() as unknown as TransformStream<Uint8Array, string>)
    .getReader();
  let buffer = "";
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, "\n");
      let cut: number;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const e: ServerSentEvent = { event: "message", data: "", id: "" };
        const data: string[] = [];
        for (const line of block.split("\n")) {
          const colon = line.indexOf(":");
          if (colon === 0) continue;
          const field = colon < 0 ? line : line.slice(0, colon);
          const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") e.event = value;
          else if (field === "data") data.push(value);
          else if (field === "id" && !value.includes("\0")) e.id = value;
          else if (field === "retry" && /^\d+$/.test(value)) e.retry = Number(value);
        }
        if (data.length) yield { ...e, data: data.join("\n") };
      }
    }
  } finally {
    // Cancelling closes the connection when the caller stops reading early.
    await reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}

/**
 * Follows an event stream to its end: when the connection drops (or the server closes it before `isLast` said the
 * stream is over), it reconnects after a backoff with `Last-Event-ID` set to the last event received, up to
 * `maxRetries` times in a row (a received event resets the count). Errors of the API (404, 401…) are not retried.
 */
export async function* followServerSentEvents(
  core: Core,
  path: string,
  isLast: (e: ServerSentEvent) => boolean,
  opts: RequestOptions = {},
): AsyncGenerator<ServerSentEvent> {
  let lastId = "";
  let failures = 0;
  let serverDelay: number | undefined;
  const maxRetries = opts.maxRetries ?? 5;
  for (;;) {
    try {
      const headers = lastId ? { ...opts.headers, "last-event-id": lastId } : opts.headers;
      const { body } = await core.stream(path, { ...opts, ...(headers ? { headers } : {}) });
      for await (const e of readServerSentEvents(body)) {
        failures = 0;
        if (e.retry !== undefined) serverDelay = e.retry;
        if (e.id) lastId = e.id;
        yield e;
        if (isLast(e)) return;
      }
    } catch (err) {
      if (err instanceof APIError || err instanceof APIUserAbortError || opts.signal?.aborted) throw err;
      if (failures >= maxRetries)
        throw err instanceof APIConnectionError
          ? err
          : new APIConnectionError(`the event stream ${path} broke: ${(err as Error).message}`, { cause: err });
    }
    // The stream ended before its last event: the connection dropped, or a proxy closed it.
    if (failures++ >= maxRetries)
      throw new APIConnectionError(
        `the event stream ${path} ended before its last event, ${maxRetries} reconnects did not finish it`,
      );
    await new Promise((r) =>
      setTimeout(r, serverDelay ?? retryDelayMs(failures - 1, undefined, { baseMs: 250, maxMs: 5_000 })),
    );
  }
}
