/**
 * Whether a batch's ControlNets run in sequence on the inference worker or in parallel in the ControlNet worker
 * (beside the U-Net's head, which then runs split): chosen by measurement, per model, ControlNet set and U-Net batch,
 * not by a flag. The first batches of a kind alternate the two modes (sequence first); after that the mode with
 * the lower median step time (U-Net plus ControlNet, as the pipeline clocks it) runs, and every `probeEvery`-th
 * batch runs the other one once, so a change in what the machine has free (another worker busy, a core freed)
 * moves the choice. The first run of each mode is not counted: it pays one-time costs (sessions created, the
 * ControlNet worker started; 10× a step's time measured), and kept in a small window it would hold the choice for
 * as long as it stays there. With one core, parallel cannot win and is never tried.
 */
export type ControlNetMode = "sequence" | "parallel";

export interface ControlNetModeOptions {
  /** Batches per mode before the choice is made. */
  calibration?: number;
  /** Every n-th batch of a kind runs the mode that is not chosen, to keep its measurement current. */
  probeEvery?: number;
  /** Step times kept per mode (the most recent). */
  window?: number;
  /** The first runs of each mode that are not counted (warm-up; default 1). */
  warmup?: number;
  /** Cores this process may use: parallel needs two. */
  cores: number;
}

interface Stats {
  batches: number;
  /** Runs recorded per mode, the warm-up ones included. */
  runs: Record<ControlNetMode, number>;
  ms: Record<ControlNetMode, number[]>;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

/**
 * What tells ControlNet batches apart for the choice: the model, each request's ControlNets with their count (the
 * same ControlNet twice runs twice), and the number of requests. Images and scales do not change the cost.
 */
export function controlNetKind(
  bundleDir: string,
  requests: ReadonlyArray<{ controlnets: ReadonlyArray<{ dir: string }> }>,
) {
  const perRequest = requests.map((r) =>
    r.controlnets
      .map((c) => c.dir)
      .sort()
      .join("+"),
  );
  return `${bundleDir}|${perRequest.sort().join(";")}|${requests.length}`;
}

export class ControlNetModeChooser {
  private readonly calibration: number;
  private readonly probeEvery: number;
  private readonly window: number;
  private readonly warmup: number;
  private readonly cores: number;
  private readonly kinds = new Map<string, Stats>();

  constructor(options: ControlNetModeOptions) {
    this.calibration = options.calibration ?? 2;
    this.probeEvery = options.probeEvery ?? 16;
    this.window = options.window ?? 8;
    this.warmup = options.warmup ?? 1;
    this.cores = options.cores;
  }

  private stats(kind: string): Stats {
    let s = this.kinds.get(kind);
    if (!s) {
      s = { batches: 0, runs: { sequence: 0, parallel: 0 }, ms: { sequence: [], parallel: [] } };
      this.kinds.set(kind, s);
      while (this.kinds.size > 256) this.kinds.delete(this.kinds.keys().next().value!);
    }
    return s;
  }

  /** The mode the measurements favour so far (sequence until parallel has measured faster). */
  preferred(kind: string): ControlNetMode {
    const s = this.kinds.get(kind);
    if (this.cores < 2 || !s || s.ms.parallel.length === 0 || s.ms.sequence.length === 0) return "sequence";
    return median(s.ms.parallel) < median(s.ms.sequence) ? "parallel" : "sequence";
  }

  /** The mode the next batch of this kind runs. */
  choose(kind: string): ControlNetMode {
    if (this.cores < 2) return "sequence";
    const s = this.stats(kind);
    s.batches++;
    const { sequence, parallel } = s.ms;
    if (sequence.length < this.calibration || parallel.length < this.calibration)
      return s.runs.sequence <= s.runs.parallel ? "sequence" : "parallel";
    const best = this.preferred(kind);
    if (s.batches % this.probeEvery === 0) return best === "sequence" ? "parallel" : "sequence";
    return best;
  }

  /** A batch of this kind ran in `mode` at `msPerStep`. */
  record(kind: string, mode: ControlNetMode, msPerStep: number): void {
    if (!Number.isFinite(msPerStep) || msPerStep < 0) return;
    const s = this.stats(kind);
    if (++s.runs[mode] <= this.warmup) return;
    const list = s.ms[mode];
    list.push(msPerStep);
    if (list.length > this.window) list.shift();
  }

  /** Median step time per mode, for logs and the bench. */
  summary(kind: string): Partial<Record<ControlNetMode, number>> {
    const s = this.kinds.get(kind);
    if (!s) return {};
    return Object.fromEntries(
      (["sequence", "parallel"] as const).filter((m) => s.ms[m].length).map((m) => [m, median(s.ms[m])]),
    );
  }
}
