/**
 * The timer behind every delivery: one Durable Object per delivery, whose alarm fires when the next attempt is
 * due. Alarms need no cron, so retries run the same under `wrangler dev`, in the test pool and in production;
 * an alarm whose handler throws (D1 unreachable) is retried by the runtime.
 */
import { DurableObject } from "cloudflare:workers";
import { database, webhooksTable } from "@imagegen/db";
import type { Env } from "../env.ts";
import { attemptDelivery } from "./deliver.ts";

export class WebhookDeliverer extends DurableObject<Env> {
  /** Wakes this deliverer at `at` (or sooner, if it was already due sooner) to attempt `deliveryId`. */
  async schedule(deliveryId: string, at: number): Promise<void> {
    await this.ctx.storage.put("delivery", deliveryId);
    const current = await this.ctx.storage.getAlarm();
    if (current === null || at < current) await this.ctx.storage.setAlarm(at);
  }

  override async alarm(): Promise<void> {
    const id = await this.ctx.storage.get<string>("delivery");
    const db = database(this.env.DB);
    let d = id ? await webhooksTable.getDelivery(db, id) : undefined;
    if (d?.status === "pending" && d.nextAttemptAt !== null && d.nextAttemptAt <= Date.now()) {
      // Undefined: a redelivery recorded this attempt first; the row as it is now says what comes next.
      d = (await attemptDelivery(this.env, db, d)) ?? (await webhooksTable.getDelivery(db, d.id));
    }
    if (d?.status === "pending" && d.nextAttemptAt !== null) await this.ctx.storage.setAlarm(d.nextAttemptAt);
    else await this.ctx.storage.deleteAll();
  }
}

/** Arms the timer of `d` for its next attempt. */
export async function scheduleDelivery(env: Pick<Env, "WEBHOOK_DELIVERER">, d: webhooksTable.Delivery): Promise<void> {
  if (d.status !== "pending" || d.nextAttemptAt === null) return;
  await env.WEBHOOK_DELIVERER.get(env.WEBHOOK_DELIVERER.idFromName(d.id)).schedule(d.id, d.nextAttemptAt);
}
