/**
 * The zoo's image evaluator, run from TypeScript: it predicts the attributes (shape, colour, size, position,
 * background) and style bits of generated images, and yields the features a Fréchet distance is computed on.
 * Its contract is `evaluator.json` beside the ONNX file (written by `python -m zoo.export evaluator`): class names per
 * head, the held-out prompts with their attributes, their shape masks (ControlNet IoU) and the Fréchet reference
 * statistics of 2000 held-out real images. The network was trained on rendered images only, never on model output.
 *
 * @example
 * const ev = await ImageEvaluator.load();
 * const scores = await ev.score(pngs, ev.heldout.slice(0, pngs.length).map((p) => p.attributes));
 * console.log(scores.mean, scores.fd);
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import * as ort from "onnxruntime-node";
import { z } from "zod";
import { decodePng } from "../addons/control-image.ts";
import { DEFAULT_SESSION_CONFIG, sessionOptions, type SessionConfig } from "../pipeline/bundle.ts";

export const DEFAULT_EVALUATOR_DIR = fileURLToPath(new URL("../../models/evaluator/", import.meta.url));

const Rgb = z.tuple([
  z.number().int().min(0).max(255),
  z.number().int().min(0).max(255),
  z.number().int().min(0).max(255),
]);

export const EvaluatorSpec = z.object({
  schema_version: z.literal(1),
  kind: z.literal("evaluator"),
  family: z.string().min(1),
  onnx: z.string().min(1),
  input: z.object({
    name: z.string(),
    shape: z.tuple([z.literal("batch"), z.literal(3), z.number().int().positive(), z.number().int().positive()]),
  }),
  attributes: z.record(z.string(), z.array(z.string()).min(2)),
  styles: z.array(z.string()),
  style_threshold_logit: z.number(),
  features: z.object({ name: z.string(), dim: z.number().int().positive() }),
  colors: z.record(z.string(), Rgb),
  fid_reference: z.object({ file: z.string(), n_real: z.number().int().positive() }),
  heldout: z.object({
    n: z.number().int().positive(),
    masks: z.string(),
    prompts: z.array(
      z.object({ seed: z.number().int(), prompt: z.string().min(1), attributes: z.record(z.string(), z.string()) }),
    ),
  }),
});
export type EvaluatorSpec = z.infer<typeof EvaluatorSpec>;

export type Attributes = Record<string, string>;

export interface HeldoutPrompt {
  /** Index into the held-out set (and its masks). */
  index: number;
  seed: number;
  prompt: string;
  attributes: Attributes;
}

export interface Prediction {
  attributes: Attributes;
  /** Style detected: its logit above the evaluator's threshold. */
  styles: Record<string, boolean>;
  features: Float32Array;
}

export interface QualityScores {
  n: number;
  /** Share of images whose predicted attribute equals the expected one, per attribute. */
  accuracy: Record<string, number>;
  /** Mean of the per-attribute accuracies (the zoo's headline number). */
  mean: number;
  /** Share of images with every attribute right. */
  allCorrect: number;
  /** Share of images in which each style is detected. */
  styleRates: Record<string, number>;
  /** Share of images in which all their expected styles are detected (when styles were expected). */
  styleDetected?: number;
  /** Fréchet distance of the images' features to the held-out real images'. */
  fd: number;
}

export class EvaluatorError extends Error {
  override readonly name = "EvaluatorError";
}

/** An image to score: a PNG file, or interleaved 8-bit RGB at the evaluator's size. */
export type ImageInput = Uint8Array;

export class ImageEvaluator {
  readonly heldout: readonly HeldoutPrompt[];
  readonly width: number;
  readonly height: number;
  readonly spec: EvaluatorSpec;
  private readonly session: ort.InferenceSession;
  private readonly reference: { mu: Float64Array; cov: Float64Array };
  private readonly masks: Uint8Array;

  private constructor(
    spec: EvaluatorSpec,
    session: ort.InferenceSession,
    reference: { mu: Float64Array; cov: Float64Array },
    masks: Uint8Array,
  ) {
    this.spec = spec;
    this.session = session;
    this.reference = reference;
    this.masks = masks;
    this.width = spec.input.shape[3];
    this.height = spec.input.shape[2];
    this.heldout = spec.heldout.prompts.map((p, index) => ({ index, ...p }));
  }

  static async load(
    dir: string = DEFAULT_EVALUATOR_DIR,
    config: SessionConfig = DEFAULT_SESSION_CONFIG,
  ): Promise<ImageEvaluator> {
    const specPath = join(dir, "evaluator.json");
    if (!existsSync(specPath))
      throw new EvaluatorError(
        `no evaluator at ${dir} (evaluator.json missing; build it with: cd gpu-runner && /usr/bin/python3 -m zoo.export evaluator)`,
      );
    const parsed = EvaluatorSpec.safeParse(JSON.parse(readFileSync(specPath, "utf8")));
    if (!parsed.success)
      throw new EvaluatorError(
        `${specPath}: ${parsed.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; ")}`,
      );
    const spec = parsed.data;
    const dim = spec.features.dim;
    const refBytes = readFileSync(join(dir, spec.fid_reference.file));
    if (refBytes.byteLength !== 8 * (dim + dim * dim))
      throw new EvaluatorError(
        `${spec.fid_reference.file}: ${refBytes.byteLength} bytes, expected ${8 * (dim + dim * dim)} for ${dim}-d features`,
      );
    const ref = new Float64Array(refBytes.buffer.slice(refBytes.byteOffset, refBytes.byteOffset + refBytes.byteLength));
    const [h, w] = [spec.input.shape[2], spec.input.shape[3]];
    const masks = new Uint8Array(readFileSync(join(dir, spec.heldout.masks)));
    if (masks.byteLength !== (spec.heldout.n * h * w) / 8 || spec.heldout.prompts.length !== spec.heldout.n) {
      throw new EvaluatorError(
        `${spec.heldout.masks}: ${masks.byteLength} bytes for ${spec.heldout.prompts.length} prompts, expected ${(spec.heldout.n * h * w) / 8} for ${spec.heldout.n}`,
      );
    }
    const session = await ort.InferenceSession.create(join(dir, spec.onnx), sessionOptions(config));
    const outputs = [...Object.keys(spec.attributes), "styles", spec.features.name];
    const missing = [spec.input.name]
      .filter((n) => !session.inputNames.includes(n))
      .concat(outputs.filter((n) => !session.outputNames.includes(n)));
    if (missing.length) {
      await session.release();
      throw new EvaluatorError(
        `${spec.onnx}: graph lacks ${missing.join(", ")} (has inputs ${session.inputNames.join(", ")}; outputs ${session.outputNames.join(", ")})`,
      );
    }
    return new ImageEvaluator(spec, session, { mu: ref.subarray(0, dim), cov: ref.subarray(dim) }, masks);
  }

  /** Interleaved RGB of an input image, checked against the evaluator's size. */
  rgb(image: ImageInput): Uint8Array {
    if (image[0] === 0x89 && image[1] === 0x50) {
      const d = decodePng(image);
      if (d.width !== this.width || d.height !== this.height)
        throw new EvaluatorError(`image is ${d.width}x${d.height}; the evaluator takes ${this.width}x${this.height}`);
      const rgb = new Uint8Array(d.width * d.height * 3);
      for (let i = 0; i < d.width * d.height; i++) rgb.set(d.rgba.subarray(i * 4, i * 4 + 3), i * 3);
      return rgb;
    }
    if (image.byteLength !== this.width * this.height * 3)
      throw new EvaluatorError(
        `raw image of ${image.byteLength} bytes; expected ${this.width}x${this.height} RGB (${this.width * this.height * 3} bytes) or a PNG`,
      );
    return image;
  }

  async predict(images: readonly ImageInput[]): Promise<Prediction[]> {
    const out: Prediction[] = [];
    const plane = this.width * this.height;
    const attrs = Object.entries(this.spec.attributes);
    for (let start = 0; start < images.length; start += 64) {
      const chunk = images.slice(start, start + 64).map((img) => this.rgb(img));
      const x = new Float32Array(chunk.length * 3 * plane);
      chunk.forEach((rgb, b) => {
        for (let i = 0; i < plane; i++)
          for (let c = 0; c < 3; c++) x[(b * 3 + c) * plane + i] = rgb[i * 3 + c]! / 127.5 - 1;
      });
      const res = await this.session.run({
        [this.spec.input.name]: new ort.Tensor("float32", x, [chunk.length, 3, this.height, this.width]),
      });
      const dim = this.spec.features.dim;
      const feats = res[this.spec.features.name]!.data as Float32Array;
      const styles = res.styles!.data as Float32Array;
      for (let b = 0; b < chunk.length; b++) {
        const attributes: Attributes = {};
        for (const [name, classes] of attrs) {
          const logits = (res[name]!.data as Float32Array).subarray(b * classes.length, (b + 1) * classes.length);
          attributes[name] = classes[argmax(logits)]!;
        }
        const st: Record<string, boolean> = {};
        this.spec.styles.forEach(
          (s, i) => (st[s] = styles[b * this.spec.styles.length + i]! > this.spec.style_threshold_logit),
        );
        out.push({ attributes, styles: st, features: feats.slice(b * dim, (b + 1) * dim) });
      }
    }
    return out;
  }

  /**
   * Scores images against the attributes their prompts asked for and, optionally, the styles each image should show
   * (`styles[i]` for image i, or one list for all).
   */
  async score(
    images: readonly ImageInput[],
    expected: readonly Attributes[],
    opts: { styles?: readonly string[] | readonly (readonly string[])[] } = {},
  ): Promise<QualityScores> {
    if (images.length !== expected.length || images.length < 2)
      throw new EvaluatorError(
        `score needs as many expectations as images, and at least 2 (got ${images.length} images, ${expected.length} expectations)`,
      );
    const styles =
      opts.styles === undefined
        ? undefined
        : opts.styles.length > 0 && Array.isArray(opts.styles[0])
          ? (opts.styles as readonly (readonly string[])[])
          : images.map(() => opts.styles as readonly string[]);
    if (styles && styles.length !== images.length)
      throw new EvaluatorError(`styles: ${styles.length} lists for ${images.length} images`);
    for (const s of styles?.flat() ?? [])
      if (!this.spec.styles.includes(s))
        throw new EvaluatorError(`unknown style "${s}" (known: ${this.spec.styles.join(", ")})`);
    const preds = await this.predict(images);
    const names = Object.keys(this.spec.attributes);
    const accuracy: Record<string, number> = {};
    for (const a of names)
      accuracy[a] = preds.filter((p, i) => p.attributes[a] === expected[i]![a]).length / preds.length;
    const styleRates: Record<string, number> = {};
    for (const s of this.spec.styles) styleRates[s] = preds.filter((p) => p.styles[s]).length / preds.length;
    const { mu, cov } = featureStatistics(preds.map((p) => p.features));
    return {
      n: preds.length,
      accuracy,
      mean: names.reduce((s, a) => s + accuracy[a]!, 0) / names.length,
      allCorrect: preds.filter((p, i) => names.every((a) => p.attributes[a] === expected[i]![a])).length / preds.length,
      styleRates,
      ...(styles?.some((l) => l.length)
        ? { styleDetected: preds.filter((p, i) => styles[i]!.every((s) => p.styles[s])).length / preds.length }
        : {}),
      fd: frechetDistance(mu, cov, this.reference.mu, this.reference.cov, this.spec.features.dim),
    };
  }

  /** The held-out shape mask of prompt `index`: one byte (0 or 1) per pixel, row-major. */
  heldoutMask(index: number): Uint8Array {
    const plane = this.width * this.height;
    if (!Number.isInteger(index) || index < 0 || index >= this.heldout.length)
      throw new EvaluatorError(`held-out index ${index} outside 0..${this.heldout.length - 1}`);
    const out = new Uint8Array(plane);
    for (let i = 0; i < plane; i++) out[i] = (this.masks[(index * plane + i) >> 3]! >> (7 - (i & 7))) & 1;
    return out;
  }

  /** Pixels nearer the colour `color` than `background` (the evaluator's palette): 1 = the shape, 0 = background. */
  segment(image: ImageInput, color: string, background: string): Uint8Array {
    const rgb = this.rgb(image);
    const fg = this.spec.colors[color],
      bg = this.spec.colors[background];
    if (!fg || !bg)
      throw new EvaluatorError(`the evaluator knows no colour ${JSON.stringify(fg ? background : color)}`);
    const out = new Uint8Array(rgb.length / 3);
    const d = (i: number, c: readonly number[]) =>
      (rgb[i * 3]! - c[0]!) ** 2 + (rgb[i * 3 + 1]! - c[1]!) ** 2 + (rgb[i * 3 + 2]! - c[2]!) ** 2;
    for (let i = 0; i < out.length; i++) out[i] = d(i, fg) < d(i, bg) ? 1 : 0;
    return out;
  }

  /**
   * IoU between held-out prompt `index`'s shape mask and the shape segmented from `image`: pixels closer to the
   * prompt's shape colour than to its background colour (as the zoo's evaluate.py does).
   */
  maskIoU(image: ImageInput, index: number): number {
    const target = this.heldoutMask(index);
    const { color, background } = this.heldout[index]!.attributes;
    const seg = this.segment(image, color!, background!);
    let inter = 0,
      union = 0;
    for (let i = 0; i < target.length; i++) {
      if (seg[i] && target[i]) inter++;
      if (seg[i] || target[i]) union++;
    }
    return inter / Math.max(union, 1);
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}

function argmax(a: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i]! > a[best]!) best = i;
  return best;
}

/** Mean and (unbiased, n − 1) covariance of feature vectors, as torch.cov computes it. */
export function featureStatistics(features: readonly Float32Array[]): { mu: Float64Array; cov: Float64Array } {
  const n = features.length;
  const dim = features[0]?.length ?? 0;
  if (n < 2) throw new EvaluatorError("feature statistics need at least 2 vectors");
  const mu = new Float64Array(dim);
  for (const f of features) for (let j = 0; j < dim; j++) mu[j]! += f[j]! / n;
  const cov = new Float64Array(dim * dim);
  const c = new Float64Array(dim);
  for (const f of features) {
    for (let j = 0; j < dim; j++) c[j] = f[j]! - mu[j]!;
    for (let i = 0; i < dim; i++) {
      const ci = c[i]!;
      if (ci === 0) continue;
      for (let j = i; j < dim; j++) cov[i * dim + j]! += ci * c[j]!;
    }
  }
  for (let i = 0; i < dim; i++) for (let j = i; j < dim; j++) cov[j * dim + i] = cov[i * dim + j]! /= n - 1;
  return { mu, cov };
}

/**
 * Fréchet distance between Gaussians: ‖μ1 − μ2‖² + tr(Σ1) + tr(Σ2) − 2·tr((Σ1^½ Σ2 Σ1^½)^½), with the square roots
 * taken through symmetric eigendecompositions (negative eigenvalues from rounding clamped to 0), as the zoo does.
 */
export function frechetDistance(
  mu1: Float64Array,
  cov1: Float64Array,
  mu2: Float64Array,
  cov2: Float64Array,
  dim: number,
): number {
  let d = 0;
  for (let i = 0; i < dim; i++) d += (mu1[i]! - mu2[i]!) ** 2;
  for (let i = 0; i < dim; i++) d += cov1[i * dim + i]! + cov2[i * dim + i]!;
  const { values, vectors } = symmetricEigen(cov1, dim);
  // s1 = V diag(sqrt(max(e, 0))) Vᵀ
  const s1 = new Float64Array(dim * dim);
  for (let k = 0; k < dim; k++) {
    const r = Math.sqrt(Math.max(values[k]!, 0));
    if (r === 0) continue;
    for (let i = 0; i < dim; i++) {
      const vik = vectors[i * dim + k]! * r;
      for (let j = 0; j < dim; j++) s1[i * dim + j]! += vik * vectors[j * dim + k]!;
    }
  }
  const m = matmul(matmul(s1, cov2, dim), s1, dim);
  for (let i = 0; i < dim; i++)
    for (let j = i + 1; j < dim; j++) m[i * dim + j] = m[j * dim + i] = (m[i * dim + j]! + m[j * dim + i]!) / 2;
  for (const e of symmetricEigen(m, dim, false).values) d -= 2 * Math.sqrt(Math.max(e, 0));
  return d;
}

function matmul(a: Float64Array, b: Float64Array, n: number): Float64Array {
  const out = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < n; k++) {
      const aik = a[i * n + k]!;
      if (aik === 0) continue;
      for (let j = 0; j < n; j++) out[i * n + j]! += aik * b[k * n + j]!;
    }
  }
  return out;
}

/**
 * Eigenvalues (and eigenvectors, as columns of a row-major matrix) of a symmetric matrix by cyclic Jacobi rotations:
 * slow in theory, a few milliseconds for the 128 × 128 matrices here, and accurate to rounding.
 */
export function symmetricEigen(
  matrix: Float64Array,
  n: number,
  withVectors = true,
): { values: Float64Array; vectors: Float64Array } {
  const a = Float64Array.from(matrix);
  const v = new Float64Array(withVectors ? n * n : 0);
  if (withVectors) for (let i = 0; i < n; i++) v[i * n + i] = 1;
  let scale = 0;
  for (let i = 0; i < n * n; i++) scale += a[i]! ** 2;
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) off += a[p * n + q]! ** 2;
    if (off <= 1e-30 * scale || off === 0) break;
    for (let p = 0; p < n; p++) {
      for (let q = p + 1; q < n; q++) {
        const apq = a[p * n + q]!;
        if (Math.abs(apq) < 1e-300) continue;
        const theta = (a[q * n + q]! - a[p * n + p]!) / (2 * apq);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1);
        const s = t * c;
        for (let k = 0; k < n; k++) {
          // columns p and q
          const akp = a[k * n + p]!,
            akq = a[k * n + q]!;
          a[k * n + p] = c * akp - s * akq;
          a[k * n + q] = s * akp + c * akq;
        }
        for (let k = 0; k < n; k++) {
          // rows p and q
          const apk = a[p * n + k]!,
            aqk = a[q * n + k]!;
          a[p * n + k] = c * apk - s * aqk;
          a[q * n + k] = s * apk + c * aqk;
        }
        if (withVectors) {
          for (let k = 0; k < n; k++) {
            const vkp = v[k * n + p]!,
              vkq = v[k * n + q]!;
            v[k * n + p] = c * vkp - s * vkq;
            v[k * n + q] = s * vkp + c * vkq;
          }
        }
      }
    }
  }
  const values = new Float64Array(n);
  for (let i = 0; i < n; i++) values[i] = a[i * n + i]!;
  return { values, vectors: v };
}
