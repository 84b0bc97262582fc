/**
 * A doorbell: idle runners (and clients waiting on a job) park here instead of sleeping between polls.
 * One topic for the runners' queue ("queue"), one per job ("job:<id>", kept in shared shard objects). Each ring bumps a
 * topic's sequence
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

/** One topic's state inside a doorbell object. */
interface Topic {
  seq: number;
  note?: BellNote;
  /** Each parked waiter, and whether it waits only for a final note (`finalOnly`). */
  waiters: Map<(rung: boolean) => void, boolean>;
  /** When it was last rung or waited on (ms): idle topics are forgotten (`TOPIC_IDLE_MS`). */
  touched: number;
}

/**
 * A topic nobody waits on is forgotten after this long without a ring or a wait. A waiter that comes back later with
 * the number it saw finds the topic at 0, is answered at once and reads D1 (as after the object's own eviction); the
 * one wait that starts from 0 without a read, a creator's `Prefer: wait`, starts right after the creation.
 */
const TOPIC_IDLE_MS = 120_000;
const SWEEP_EVERY_MS = 30_000;

/**
 * The doorbell objects. Each holds any number of topics by key: the runners' queue is the key "" of the "queue"
 * object; a job's topic is the job id's key in one of `JOB_SHARDS` shared objects, so that a job costs no object of
 * its own (creating one costs ~10× a call to a live one, locally and in production alike).
 */
export class Doorbell extends DurableObject {
  private topics = new Map<string, Topic>();
  private swept = Date.now();

  private topic(key: string): Topic {
    const now = Date.now();
    if (now - this.swept > SWEEP_EVERY_MS) {
      this.swept = now;
      for (const [k, t] of this.topics)
        if (t.waiters.size === 0 && now - t.touched > TOPIC_IDLE_MS) this.topics.delete(k);
    }
    let t = this.topics.get(key);
    if (!t) this.topics.set(key, (t = { seq: 0, waiters: new Map(), touched: now }));
    t.touched = now;
    return t;
  }

  /** The current sequence number: read it before looking for work. */
  async current(key = ""): Promise<number> {
    return this.topic(key).seq;
  }

  /**
   * Resolves at the first ring after `seenSeq` (at once if one already happened), or on timeout (`rung: false`).
   * `finalOnly`: a ring whose note says the change was not the last (a job acknowledged, progress) does not wake this
   * waiter (one waiting for a job's end would only read nothing and wait again); a ring without a note still does.
   */
  async wait(seenSeq: number, timeoutMs: number, finalOnly = false, key = ""): Promise<Rung> {
    const t = this.topic(key);
    const outcome = (rung: boolean): Rung => ({ rung, seq: t.seq, ...(t.note ? { note: t.note } : {}) });
    if (t.seq !== seenSeq && wakes(t, finalOnly)) return outcome(true);
    if (timeoutMs <= 0) return outcome(false);
    return new Promise<Rung>((resolve) => {
      const done = (rung: boolean) => {
        clearTimeout(timer);
        t.waiters.delete(done);
        t.touched = Date.now();
        resolve(outcome(rung));
      };
      const timer = setTimeout(() => done(false), timeoutMs);
      t.waiters.set(done, finalOnly);
    });
  }

  /** Wakes every waiter; returns the new sequence number (the state after this change is that number's). */
  async ring(note?: BellNote, key = ""): Promise<number> {
    const t = this.topic(key);
    t.seq++;
    // A ring that was late (sent in the background before the end) must not hide the end from a waiter.
    if (!t.note?.final) t.note = note;
    for (const [wake, finalOnly] of [...t.waiters]) if (wakes(t, finalOnly)) wake(true);
    return t.seq;
  }
}

/** Whether a topic's last ring wakes a waiter: any ring wakes all but `finalOnly` ones, which a non-final note does not. */
const wakes = (t: Topic, finalOnly: boolean) => !finalOnly || t.note?.final === true || t.note?.status === undefined;

type DoorbellEnv = { DOORBELL: DurableObjectNamespace<Doorbell> };

/** How many objects the jobs' topics are spread over. */
export const JOB_SHARDS = 64;

/** The object and key of a topic: a job's (`jobTopic`) lives in its shard; any other is an object of its own. */
export function topicAddress(topic: string): { object: string; key: string } {
  if (!topic.startsWith(JOB_PREFIX)) return { object: topic, key: "" };
  const id = topic.slice(JOB_PREFIX.length);
  // FNV-1a: a cheap, stable spread of ids over the shards.
  let h = 0x811c9dc5;
  for (let i = 0; i < id.length; i++) h = Math.imul(h ^ id.charCodeAt(i), 0x01000193);
  return { object: `jobs:${(h >>> 0) % JOB_SHARDS}`, key: id };
}

/** A topic's doorbell; its calls are timed into the request's `Server-Timing` (`do`, and `bell_wait` for waits). */
export function doorbell(env: DoorbellEnv, topic: string) {
  const { object, key } = topicAddress(topic);
  const stub = env.DOORBELL.get(env.DOORBELL.idFromName(object));
  return {
    current: (): Promise<number> => timed("do", () => stub.current(key)),
    wait: (seenSeq: number, timeoutMs: number, finalOnly = false): Promise<Rung> =>
      timed("bell_wait", async () => (await stub.wait(seenSeq, timeoutMs, finalOnly, key)) as Rung),
    ring: (note?: BellNote): Promise<number> => timed("do", () => stub.ring(note, key)),
  };
}

export const QUEUE_TOPIC = "queue";
const JOB_PREFIX = "job:";
export const jobTopic = (jobId: string) => `${JOB_PREFIX}${jobId}`;
