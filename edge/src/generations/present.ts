/** A job as the public API shows it: the `Generation` object, with signed GET URLs for its finished images. */
import { jobsTable, type Db } from "@imagegen/db";
import { iso, type Generation } from "@imagegen/contracts";
import type { Env } from "../env.ts";
import { timed } from "../middleware/server-timing.ts";
import { objectStore, storageConfigured } from "../storage/index.ts";

type SignedUrls = Map<string, { url: string; expiresAt: number }>;

export function presentJob(job: jobsTable.Job, images: jobsTable.Image[], urls: SignedUrls = new Map()): Generation {
  return {
    id: job.id,
    object: "generation",
    status: job.status,
    request: job.request,
    progress: job.progressTotal != null ? { step: job.progressStep ?? 0, total: job.progressTotal } : null,
    images: images
      .filter((img) => img.jobId === job.id && img.deletedAt === null)
      .map((img) => ({
        index: img.index,
        width: img.width,
        height: img.height,
        seed: img.seed,
        sha256: img.sha256,
        size_bytes: img.sizeBytes,
        url: urls.get(img.id)?.url ?? null,
        url_expires_at: iso(urls.get(img.id)?.expiresAt),
      })),
    error:
      job.errorCode && job.status !== "succeeded" ? { code: job.errorCode, message: job.errorMessage ?? "" } : null,
    attempts: job.attempts,
    timings: job.timings ?? null,
    provenance: job.provenance ?? null,
    created_at: iso(job.createdAt)!,
    started_at: iso(job.startedAt),
    finished_at: iso(job.finishedAt),
  };
}

/** Signs a GET URL for each image with its job's output TTL (none when storage is not configured). */
async function signImages(env: Env, jobs: jobsTable.Job[], images: jobsTable.Image[]): Promise<SignedUrls> {
  const urls: SignedUrls = new Map();
  if (!storageConfigured(env) || images.length === 0) return urls;
  const store = objectStore(env);
  const ttlOf = new Map(jobs.map((j) => [j.id, j.request.output_ttl_seconds]));
  const now = Date.now();
  await Promise.all(
    images.map(async (img) => {
      const ttl = ttlOf.get(img.jobId) ?? 3600;
      const url = await timed("presign", () => store.presignGet(img.storageKey, ttl));
      urls.set(img.id, { url, expiresAt: now + ttl * 1000 });
    }),
  );
  return urls;
}

export async function presentJobs(env: Env, db: Db, jobs: jobsTable.Job[]): Promise<Generation[]> {
  const images = await jobsTable.jobImages(
    db,
    jobs.filter((j) => j.status === "succeeded").map((j) => j.id),
  );
  const urls = await signImages(env, jobs, images);
  return jobs.map((j) => presentJob(j, images, urls));
}

/** One job as the API shows it; `images`: its images when the caller read them with it (no second read). */
export async function loadPresentedJob(
  env: Env,
  db: Db,
  job: jobsTable.Job,
  images?: jobsTable.Image[],
): Promise<Generation> {
  if (!images) return (await presentJobs(env, db, [job]))[0]!;
  const shown = job.status === "succeeded" ? images : [];
  return presentJob(job, shown, await signImages(env, [job], shown));
}
