/**
 * A doorbell: idle runners (and clients waiting on a job) park here instead of sleeping between polls.
 * One instance per topic ("queue" for runners, "job:<id>" for a job's watchers). Each ring bumps a sequence
 * number; a waiter passes the number it saw before it last looked at D1, so a ring that lands between the
 * look and the wait is never missed. A ring may carry a note (a job's status after the change), which the waiter
 * gets with the new sequence number: a client waiting for the end of a job skips the read of a change that is not
 * its end, and a waiter goes on from the number it was handed without asking for it again.
 */
import { DurableObject } from "cloudflare:workers";
import { timed } from "../middleware/server-timing.ts";

/** What a ring says about the change it announces. */
export interface BellNote {
  status?: string;
  /** The change was the last one (a job that ended): this note is kept whatever later rings say. */
  final?: boolean;
}

/** A wait's outcome: whether a ring came, the sequence number now, and the last ring's note. */
export interface Rung {
  rung: boolean;
  seq: number;
  note?: BellNote;
}

export class Doorbell extends DurableObject {
  private seq = 0;
  private note: BellNote | undefined;
  /** Each parked waiter, and whether it waits only for a final note (`finalOnly`). */
  private waiters = new Map<(rung: boolean) => void, boolean>();

  /** The current sequence number: read it before looking for work. */
  async current(): Promise<number> {
    return this.seq;
  }

  /**
   * Resolves at the first ring after `seenSeq` (at once if one already happened), or on timeout (`rung: false`).
   * `finalOnly`: a ring whose note says the change was not the last (a job acknowledged, progress) does not wake this
   * waiter (one waiting for a job's end would only read nothing and wait again); a ring without a note still does.
   */
  async wait(seenSeq: number, timeoutMs: number, finalOnly = false): Promise<Rung> {
    const outcome = (rung: boolean): Rung => ({ rung, seq: this.seq, ...(this.note ? { note: this.note } : {}) });
    if (this.seq !== seenSeq && this.wakes(finalOnly)) return outcome(true);
    if (timeoutMs <= 0) return outcome(false);
    return new Promise<Rung>((resolve) => {
      const done = (rung: boolean) => {
        clearTimeout(timer);
        this.waiters.delete(done);
        resolve(outcome(rung));
      };
      const timer = setTimeout(() => done(false), timeoutMs);
      this.waiters.set(done, finalOnly);
    });
  }

  /** Wakes every waiter; returns the new sequence number (the state after this change is that number's). */
  async ring(note?: BellNote): Promise<number> {
    this.seq++;
    // A ring that was late (sent in the background before the end) must not hide the end from a waiter.
    if (!this.note?.final) this.note = note;
    for (const [wake, finalOnly] of [...this.waiters]) if (this.wakes(finalOnly)) wake(true);
    return this.seq;
  }

  /** Whether the last ring wakes a waiter: any ring wakes all but `finalOnly` ones, which a non-final note does not. */
  private wakes(finalOnly: boolean): boolean {
    return !finalOnly || this.note?.final === true || this.note?.status === undefined;
  }
}

type DoorbellEnv = { DOORBELL: DurableObjectNamespace<Doorbell> };

/** A topic's doorbell; its calls are timed into the request's `Server-Timing` (`do`, and `bell_wait` for waits). */
export function doorbell(env: DoorbellEnv, topic: string) {
  const stub = env.DOORBELL.get(env.DOORBELL.idFromName(topic));
  return {
    current: (): Promise<number> => timed("do", () => stub.current()),
    wait: (seenSeq: number, timeoutMs: number, finalOnly = false): Promise<Rung> =>
      timed("bell_wait", async () => (await stub.wait(seenSeq, timeoutMs, finalOnly)) as Rung),
    ring: (note?: BellNote): Promise<number> => timed("do", () => stub.ring(note)),
  };
}

export const QUEUE_TOPIC = "queue";
export const jobTopic = (jobId: string) => `job:${jobId}`;
