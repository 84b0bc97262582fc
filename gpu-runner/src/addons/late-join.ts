/**
 * Bounded asynchronous loading (SwiftDiffusion/Katz): the generation starts while add-ons are still being fetched
 * and parsed, and they join by a bounded step.
 */
import type { UnetInputProvider } from "../pipeline/pipeline.ts";

/**
 * Steps before step ⌊joinFraction · steps⌋ run without the add-ons if they are not there yet, and there the
 * generation waits for them. A fraction, not a step number, so that one bound means the same on DDIM-50 and LCM-4.
 * `joinedAt` tells at which step they took effect (0 when they were there in time).
 */
export function lateAddons(
  pending: Promise<UnetInputProvider | undefined>,
  joinFraction: number,
): { provider: UnetInputProvider; joinedAt: () => number | null } {
  let ready: UnetInputProvider | undefined | null = null; // null: not arrived yet
  let joinedAt: number | null = null;
  pending.then(
    (p) => (ready = p),
    () => {},
  );
  return {
    joinedAt: () => joinedAt,
    provider: async (step) => {
      if (ready === null && step.stepIndex < joinStepOf(joinFraction, step.steps)) return {};
      if (ready === null) ready = await pending;
      if (joinedAt === null) joinedAt = step.stepIndex;
      return ready ? ready(step) : {};
    },
  };
}

/**
 * The runner's default bound: late add-ons must be there by the first step (fraction 0), so loading overlaps the
 * prompt's encoding but no sampling step. Measured (bench/JOIN.md, trained style LoRAs scored by the evaluator on
 * 96 held-out prompts, DDIM-50 + CFG): style detection 0.385 joining at step 0, 0.302 at step 3, 0.250 at step 5,
 * 0.094 at step 20; the style is decided in the first steps, so any later join costs more than the 0.05 allowed.
 * Deployments that prefer latency over style fidelity raise it (`--addon-join-fraction`).
 */
export const DEFAULT_ADDON_JOIN_FRACTION = 0;

/** The step by which late add-ons must have joined: ⌊fraction · steps⌋, and never past the last step. */
export function joinStepOf(fraction: number, steps: number): number {
  return Math.min(Math.floor(fraction * steps), steps - 1);
}
