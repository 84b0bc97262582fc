/** The pipeline's last model step: latents through the VAE decoder. */
import type { Bundle } from "./bundle.ts";
import type { LatentShape } from "./latents.ts";
import { floatTensor, GenerationError } from "./tensors.ts";

/** The decoded images, planar RGB in [-1, 1], [n, 3, height, width]. */
export async function decodeLatents(
  bundle: Bundle,
  latents: Float32Array,
  shape: LatentShape,
  width: number,
  height: number,
): Promise<Float32Array> {
  const scale = bundle.manifest.latent.scaling_factor;
  const scaled = new Float32Array(latents.length);
  for (let i = 0; i < latents.length; i++) scaled[i] = latents[i]! / scale;
  const vae = bundle.components.vae_decoder;
  const out = (await vae.run({ [vae.spec.inputs[0]!.name]: floatTensor(scaled, shape) }))[vae.spec.outputs[0]!.name]!;
  const expected = [shape[0], 3, height, width];
  if (out.dims.join() !== expected.join()) {
    throw new GenerationError(`vae_decoder returned [${out.dims.join(", ")}], expected [${expected.join(", ")}]`);
  }
  return out.data as Float32Array;
}
