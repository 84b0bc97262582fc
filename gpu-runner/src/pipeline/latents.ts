/** The starting latents and the noise the sampler draws on, per image from its own seed. */
import type { NoiseSource } from "../samplers/types.ts";
import { Rng } from "./rng.ts";
import { GenerationError } from "./tensors.ts";

export type LatentShape = [number, number, number, number];

/**
 * Image i's noise comes from Rng(seeds[i]) alone, so an image does not depend on the batch it runs in; the same
 * generators go on to serve the sampler's re-noising (LCM).
 */
export function prepareLatents(
  seeds: readonly number[],
  shape: LatentShape,
  initNoiseSigma: number,
): { latents: Float32Array; noise: NoiseSource } {
  const n = seeds.length;
  const perImage = shape[1] * shape[2] * shape[3];
  const rngs = seeds.map((seed) => new Rng(seed));
  const noise: NoiseSource = (size) => {
    if (size !== n * perImage)
      throw new GenerationError(`noise of ${size} values asked for a batch of ${n}×${perImage}`);
    const out = new Float32Array(size);
    rngs.forEach((rng, i) => rng.fillGaussian(out.subarray(i * perImage, (i + 1) * perImage)));
    return out;
  };
  const latents = noise(n * perImage);
  if (initNoiseSigma !== 1) for (let i = 0; i < latents.length; i++) latents[i]! *= initNoiseSigma;
  return { latents, noise };
}
