/**
 * DeepCache (Ma et al., CVPR 2024) on a U-Net exported in three parts: a full pass (head → deep → tail) on
 * some steps, and on the steps between only head → tail with the deep part's outputs from the last full pass.
 * This file decides which steps are full; the pipeline wires the parts by tensor name.
 */

export interface DeepCachePolicy {
  /** A full pass every `interval` steps on average; 1 means every step is full (no caching). */
  interval: number;
  /** Uniform: full when i % interval == 0. Non-uniform: full passes denser around `center`. */
  mode: "uniform" | "non-uniform";
  /** Non-uniform only: the step the full passes crowd around (DeepCache's default is 15 of 50, i.e. 0.3·steps). */
  center?: number;
  /** Non-uniform only: the starting exponent of the spacing (DeepCache's default 1.4), lowered until it fits. */
  power?: number;
}

/**
 * Which steps run the deep part: `true` = full pass. Step 0 is always full (there is nothing cached yet).
 * The non-uniform schedule follows DeepCache's `sample_from_quad_center`: ceil(steps/interval) full passes at
 * center + sign(x)·|x|^p for x evenly spaced between −center^(1/p) and (steps−center)^(1/p); p is lowered by
 * 0.02 until the passes are distinct. (The reference raises negative bases to fractional powers in Python, which
 * goes through complex numbers; the sign-preserving power here is the intended symmetric spacing.)
 */
export function deepCacheSchedule(steps: number, policy: DeepCachePolicy): boolean[] {
  if (!Number.isInteger(steps) || steps < 1) throw new RangeError(`deepCacheSchedule: steps must be ≥ 1, got ${steps}`);
  if (!Number.isInteger(policy.interval) || policy.interval < 1) {
    throw new RangeError(`deepCacheSchedule: interval must be an integer ≥ 1, got ${policy.interval}`);
  }
  const uniform = Array.from({ length: steps }, (_, i) => i % policy.interval === 0);
  if (policy.mode === "uniform" || policy.interval === 1) return uniform;
  const fullPasses = Math.ceil(steps / policy.interval);
  const center = policy.center ?? Math.round(0.3 * steps);
  for (let p = policy.power ?? 1.4; p > 1; p -= 0.02) {
    const indices = quadCenterIndices(steps, fullPasses, center, p);
    if (indices !== null) {
      const schedule = new Array<boolean>(steps).fill(false);
      for (const i of indices) schedule[i] = true;
      return schedule;
    }
  }
  return uniform; // too few steps to space non-uniformly: fall back rather than refuse
}

function quadCenterIndices(steps: number, count: number, center: number, p: number): number[] | null {
  const signedPow = (x: number, e: number) => Math.sign(x) * Math.abs(x) ** e;
  const lo = signedPow(-center, 1 / p);
  const hi = signedPow(steps - center, 1 / p);
  const values = new Set<number>();
  for (let i = 0; i <= count; i++) values.add(Math.trunc(signedPow(lo + ((hi - lo) * i) / count, p)));
  const sorted = [...values].sort((a, b) => a - b).slice(1, -1);
  const indices = new Set([0, ...sorted.map((v) => v + center)]);
  if (indices.size !== count) return null;
  for (const i of indices) if (i < 0 || i >= steps) return null;
  return [...indices];
}
