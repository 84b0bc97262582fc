/**
 * A doorbell: idle runners (and clients waiting on a job) park here instead of sleeping between polls.
 * One instance per topic ("queue" for runners, "job:<id>" for a job's watchers). Each ring bumps a sequence
 * number; a waiter passes the number it saw before it last looked at D1, so a ring that lands between the
 * look and the wait is never missed.
 */
import { DurableObject } from "cloudflare:workers";

export class Doorbell extends DurableObject {
  private seq = 0;
  private waiters = new Set<(rung: boolean) => void>();

  /** The current sequence number: read it before looking for work. */
  async current(): Promise<number> {
    return this.seq;
  }

  /** Resolves true at the first ring after `seenSeq` (at once if one already happened), false on timeout. */
  async wait(seenSeq: number, timeoutMs: number): Promise<boolean> {
    if (this.seq !== seenSeq) return true;
    if (timeoutMs <= 0) return false;
    return new Promise<boolean>((resolve) => {
      const done = (rung: boolean) => {
        clearTimeout(timer);
        this.waiters.delete(done);
        resolve(rung);
      };
      const timer = setTimeout(() => done(false), timeoutMs);
      this.waiters.add(done);
    });
  }

  /** Wakes every waiter; returns how many were waiting. */
  async ring(): Promise<number> {
    this.seq++;
    const woken = this.waiters.size;
    for (const wake of [...this.waiters]) wake(true);
    return woken;
  }
}

type DoorbellEnv = { DOORBELL: DurableObjectNamespace<Doorbell> };

export function doorbell(env: DoorbellEnv, topic: string): DurableObjectStub<Doorbell> {
  return env.DOORBELL.get(env.DOORBELL.idFromName(topic));
}

export const QUEUE_TOPIC = "queue";
export const jobTopic = (jobId: string) => `job:${jobId}`;
