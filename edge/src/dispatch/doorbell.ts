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
  private waiters = new Set<(rung: boolean) => void>();

  /** The current sequence number: read it before looking for work. */
  async current(): Promise<number> {
    return this.seq;
  }

  /** Resolves at the first ring after `seenSeq` (at once if one already happened), or on timeout (`rung: false`). */
  async wait(seenSeq: number, timeoutMs: number): Promise<Rung> {
    const outcome = (rung: boolean): Rung => ({ rung, seq: this.seq, ...(this.note ? { note: this.note } : {}) });
    if (this.seq !== seenSeq) return outcome(true);
    if (timeoutMs <= 0) return outcome(false);
    return new Promise<Rung>((resolve) => {
      const done = (rung: boolean) => {
        clearTimeout(timer);
        this.waiters.delete(done);
        resolve(outcome(rung));
      };
      const timer = setTimeout(() => done(false), timeoutMs);
      this.waiters.add(done);
    });
  }

  /** Wakes every waiter; returns the new sequence number (the state after this change is that number's). */
  async ring(note?: BellNote): Promise<number> {
    this.seq++;
    // A ring that was late (sent in the background before the end) must not hide the end from a waiter.
    if (!this.note?.final) this.note = note;
    for (const wake of [...this.waiters]) wake(true);
    return this.seq;
  }
}

type DoorbellEnv = { DOORBELL: DurableObjectNamespace<Doorbell> };

/** A topic's doorbell; its calls are timed into the request's `Server-Timing` (`do`, and `bell_wait` for waits). */
export function doorbell(env: DoorbellEnv, topic: string) {
  const stub = env.DOORBELL.get(env.DOORBELL.idFromName(topic));
  return {
    current: (): Promise<number> => timed("do", () => stub.current()),
    wait: (seenSeq: number, timeoutMs: number): Promise<Rung> =>
      timed("bell_wait", async () => (await stub.wait(seenSeq, timeoutMs)) as Rung),
    ring: (note?: BellNote): Promise<number> => timed("do", () => stub.ring(note)),
  };
}

export const QUEUE_TOPIC = "queue";
export const jobTopic = (jobId: string) => `job:${jobId}`;
