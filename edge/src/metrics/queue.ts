/**
 * The queue and runner-pool metrics an autoscaler reads (`/admin/v1/metrics`): queue depth and the oldest queued
 * job's age per model (scale out), leased jobs and live runners (scale in, and whether the pool is keeping up),
 * and jobs by terminal status (error rate). Names carry the `imagegen_` prefix and the units in the name.
 */
import { metricsTable, type Db } from "@imagegen/db";
import { TERMINAL_JOB_STATUSES } from "@imagegen/contracts/enums";
import type { MetricFamily } from "./exposition.ts";

/**
 * A runner polling for a lease reports itself at each poll, and a poll waits at most 60 s (`wait_ms`'s maximum):
 * a runner silent for longer than one full poll plus slack is gone, unless it holds a lease.
 */
export const RUNNER_LIVE_WINDOW_MS = 90_000;

/** Reads the queue at `now` and returns it as metric families, every family present even when it has no jobs. */
export async function queueMetrics(db: Db, now: number, liveWindowMs = RUNNER_LIVE_WINDOW_MS): Promise<MetricFamily[]> {
  const s = await metricsTable.queueSnapshot(db, now, liveWindowMs);
  const queued = new Map(s.queued.map((q) => [q.modelId, q]));
  const leased = new Map(s.leased.map((l) => [l.modelId, l]));
  const finished = new Map(s.finished.map((f) => [f.status, f.jobs]));
  // Every registered model, and any model a job names that was since removed: a model with nothing queued reads 0.
  const models = [...new Set([...s.models, ...queued.keys(), ...leased.keys()])].sort();
  const byModel = (value: (m: string) => number) => models.map((model) => ({ labels: { model }, value: value(model) }));
  return [
    {
      name: "imagegen_queue_depth",
      help: "Jobs waiting in the queue for a runner, per model.",
      type: "gauge",
      samples: byModel((m) => queued.get(m)?.jobs ?? 0),
    },
    {
      name: "imagegen_queue_images",
      help: "Images the queued jobs ask for, per model.",
      type: "gauge",
      samples: byModel((m) => queued.get(m)?.images ?? 0),
    },
    {
      name: "imagegen_queue_oldest_age_seconds",
      help: "Age of the oldest queued job, per model (0 when none is queued).",
      type: "gauge",
      samples: byModel((m) => {
        const q = queued.get(m);
        return q ? Math.max(0, now - q.oldestCreatedAt) / 1000 : 0;
      }),
    },
    {
      name: "imagegen_jobs_leased",
      help: "Running jobs whose lease has not expired, per model (acknowledged and provisional leases).",
      type: "gauge",
      samples: byModel((m) => leased.get(m)?.leased ?? 0),
    },
    {
      name: "imagegen_jobs_leased_acknowledged",
      help: "Leased jobs whose runner acknowledged the lease (its first heartbeat), per model.",
      type: "gauge",
      samples: byModel((m) => leased.get(m)?.acknowledged ?? 0),
    },
    {
      name: "imagegen_runners_live",
      help: `Enabled runners seen within ${liveWindowMs / 1000} s or holding an unexpired lease.`,
      type: "gauge",
      samples: [{ value: s.runners.live }],
    },
    {
      name: "imagegen_runners_live_capacity",
      help: "Leases the live runners may hold at once (sum of their registered capacities).",
      type: "gauge",
      samples: [{ value: s.runners.liveCapacity }],
    },
    {
      name: "imagegen_runners_registered",
      help: "Runners registered and not revoked, live or not.",
      type: "gauge",
      samples: [{ value: s.runners.registered }],
    },
    {
      name: "imagegen_jobs_created_total",
      help: "Jobs ever created.",
      type: "counter",
      samples: [{ value: s.created }],
    },
    {
      name: "imagegen_jobs_finished_total",
      help: "Jobs that reached a terminal status, by status.",
      type: "counter",
      samples: TERMINAL_JOB_STATUSES.map((status) => ({ labels: { status }, value: finished.get(status) ?? 0 })),
    },
  ];
}
