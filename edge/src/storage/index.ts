/**
 * Object storage through the S3 API (`@aws-sdk/client-s3`): R2 in production, any S3-compatible store elsewhere,
 * and wrangler's local R2 bucket (which checks SigV4 signatures and expiry) on one machine. Runners and clients
 * only ever get presigned URLs for exactly the objects a job reads or writes; keys are namespaced by tenant.
 * What the edge does itself (HEAD, reads, deletes) goes through the R2 binding when there is one, and through the
 * S3 API otherwise: every caller uses this one interface, so either store serves every path.
 */
import {
  CopyObjectCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
} from "@aws-sdk/client-s3";
import { getSignedUrl } from "@aws-sdk/s3-request-presigner";
import type { Env } from "../env.ts";
import { ApiError } from "../errors.ts";

export interface ObjectInfo {
  size: number;
  contentType?: string;
  /** SHA-256 (hex) the store verified when the object was written, where it keeps one. */
  sha256?: string;
}

/** What a presigned PUT pins in its signature besides the key: any other body or header is refused by the store. */
export interface PutConditions {
  contentType: string;
  contentLength?: number;
  /** Hex SHA-256 of the body, signed as `x-amz-checksum-sha256`: the store checks the bytes against it. */
  sha256?: string;
}

export interface ObjectStore {
  presignGet(key: string, expiresInSeconds: number): Promise<string>;
  /** A PUT that must carry exactly these conditions; `headers` are the ones the uploader must send. */
  presignPut(
    key: string,
    expiresInSeconds: number,
    conditions: PutConditions,
  ): Promise<{ url: string; headers: Record<string, string> }>;
  head(key: string): Promise<ObjectInfo | undefined>;
  /** The whole object, undefined when it does not exist. */
  get(key: string): Promise<Uint8Array | undefined>;
  /** Deletes the objects; a key that does not exist is not an error. */
  delete(keys: string[]): Promise<void>;
  /** SHA-256 (hex) of the object, streamed; undefined when it does not exist. */
  sha256(key: string): Promise<string | undefined>;
  /** The first bytes of an object (e.g. a safetensors header), undefined when it does not exist. */
  readRange(key: string, offset: number, length: number): Promise<Uint8Array | undefined>;
  /** Copies an object inside the bucket (streamed); false when the source does not exist. */
  copy(fromKey: string, toKey: string): Promise<boolean>;
  /** Every key under `prefix` (retention sweeps: a job's outputs). */
  list(prefix: string): Promise<string[]>;
}

/** Per lease: a runner whose lease ended writes only under its own lease, never over the images a job kept. */
export const outputKey = (tenantId: string, jobId: string, leaseId: string, index: number) =>
  `tenants/${tenantId}/outputs/${jobId}/${leaseId}/${index}.png`;
export const addonKey = (tenantId: string, addonId: string, version: number) =>
  `tenants/${tenantId}/addons/${addonId}/v${version}`;
/**
 * Where a tenant's presigned PUT writes an add-on version. Finalize copies it to the version's own key, for which no
 * PUT is ever signed: an upload URL (alive for an hour) cannot replace a file once it is `ready`.
 */
export const addonUploadKey = (storageKey: string) => `${storageKey}.upload`;

/**
 * Moves an add-on upload to its version's key, out of reach of the upload URL, and describes what landed there;
 * undefined when nothing was uploaded. Everything after (size, hash, validation) reads the sealed copy, so a PUT
 * racing finalize cannot swap the bytes between the check and `ready`.
 */
export async function sealUpload(store: ObjectStore, storageKey: string): Promise<ObjectInfo | undefined> {
  const upload = addonUploadKey(storageKey);
  if (await store.copy(upload, storageKey)) await store.delete([upload]);
  return store.head(storageKey);
}

const hexToBase64 = (hex: string) => btoa(String.fromCharCode(...hex.match(/../g)!.map((h) => Number.parseInt(h, 16))));
const bytesToHex = (bytes: ArrayBuffer) =>
  [...new Uint8Array(bytes)].map((b) => b.toString(16).padStart(2, "0")).join("");

/** Longest a presigned URL may live (SigV4's own limit is 7 days). */
export const MAX_URL_TTL_SECONDS = 7 * 24 * 3600;

export const storageConfigured = (env: Env) =>
  Boolean(env.S3_ENDPOINT && env.S3_ACCESS_KEY_ID && env.S3_SECRET_ACCESS_KEY);

let cached: { fingerprint: string; client: S3Client } | undefined;

function s3(env: Env): { client: S3Client; bucket: string } {
  if (!env.S3_ENDPOINT || !env.S3_ACCESS_KEY_ID || !env.S3_SECRET_ACCESS_KEY) {
    throw new ApiError(
      503,
      "api_error",
      "storage_not_configured",
      "Object storage is not configured (S3_ENDPOINT, S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY).",
    );
  }
  const fingerprint = `${env.S3_ENDPOINT}|${env.S3_REGION}|${env.S3_ACCESS_KEY_ID}`;
  if (cached?.fingerprint !== fingerprint) {
    cached = {
      fingerprint,
      client: new S3Client({
        endpoint: env.S3_ENDPOINT,
        region: env.S3_REGION || "auto",
        forcePathStyle: true,
        credentials: { accessKeyId: env.S3_ACCESS_KEY_ID, secretAccessKey: env.S3_SECRET_ACCESS_KEY },
        // Without these, presigned PUTs carry an empty-body checksum that S3 and R2 reject.
        requestChecksumCalculation: "WHEN_REQUIRED",
        responseChecksumValidation: "WHEN_REQUIRED",
      }),
    };
  }
  return { client: cached.client, bucket: env.S3_BUCKET || "imagegen" };
}

async function digestStream(body: ReadableStream<Uint8Array>): Promise<string> {
  const digest = new crypto.DigestStream("SHA-256");
  await body.pipeTo(digest);
  return bytesToHex(await digest.digest);
}

/**
 * The edge's own S3 calls are presigned and fetched rather than sent through the client: in Workers the SDK parses
 * XML answers (errors such as NoSuchKey, DeleteObjects results) with DOMParser, which workerd lacks
 * (aws/aws-sdk-js-v3#7375), so a missing object would throw instead of answering "not there".
 */
async function s3Fetch(
  env: Env,
  command: GetObjectCommand | DeleteObjectCommand,
  init: RequestInit,
): Promise<Response> {
  return fetch(await getSignedUrl(s3(env).client, command, { expiresIn: 60 }), init);
}

/** An object's body, or undefined when there is none (the fetched answer is a 404). */
async function s3Get(env: Env, key: string, range?: string): Promise<Response | undefined> {
  const res = await s3Fetch(
    env,
    new GetObjectCommand({ Bucket: s3(env).bucket, Key: key }),
    range ? { headers: { range } } : {},
  );
  if (res.status === 404) {
    await res.body?.cancel();
    return undefined;
  }
  if (!res.ok) throw new Error(`Storage answered ${res.status} to GET ${key}: ${(await res.text()).slice(0, 200)}`);
  return res;
}

export function objectStore(env: Env): ObjectStore {
  const bucket = env.BUCKET;
  return {
    async presignGet(key, expiresIn) {
      const { client, bucket: name } = s3(env);
      return getSignedUrl(client, new GetObjectCommand({ Bucket: name, Key: key }), {
        expiresIn: Math.min(expiresIn, MAX_URL_TTL_SECONDS),
      });
    },
    async presignPut(key, expiresIn, { contentType, contentLength, sha256 }) {
      const { client, bucket: name } = s3(env);
      const checksum = sha256 ? hexToBase64(sha256) : undefined;
      const command = new PutObjectCommand({
        Bucket: name,
        Key: key,
        ContentType: contentType,
        ContentLength: contentLength,
        ChecksumSHA256: checksum,
      });
      const url = await getSignedUrl(client, command, {
        expiresIn: Math.max(1, Math.min(expiresIn, MAX_URL_TTL_SECONDS)),
        signableHeaders: new Set([
          "content-type",
          ...(contentLength !== undefined ? ["content-length"] : []),
          ...(checksum ? ["x-amz-checksum-sha256"] : []),
        ]),
        // Kept a header (not hoisted into the query), so the uploader must send it and the store verifies the body.
        ...(checksum ? { unhoistableHeaders: new Set(["x-amz-checksum-sha256"]) } : {}),
      });
      return {
        url,
        headers: { "content-type": contentType, ...(checksum ? { "x-amz-checksum-sha256": checksum } : {}) },
      };
    },
    async head(key) {
      if (bucket) {
        const obj = await bucket.head(key);
        if (!obj) return undefined;
        const sha256 = obj.checksums.sha256;
        return {
          size: obj.size,
          contentType: obj.httpMetadata?.contentType,
          ...(sha256 ? { sha256: bytesToHex(sha256) } : {}),
        };
      }
      const { client, bucket: name } = s3(env);
      try {
        const r = await client.send(new HeadObjectCommand({ Bucket: name, Key: key }));
        return { size: r.ContentLength ?? 0, contentType: r.ContentType };
      } catch (err) {
        if ((err as { name?: string }).name === "NotFound") return undefined;
        throw err;
      }
    },
    async get(key) {
      if (bucket) {
        const obj = await bucket.get(key);
        return obj ? new Uint8Array(await obj.arrayBuffer()) : undefined;
      }
      const res = await s3Get(env, key);
      return res ? new Uint8Array(await res.arrayBuffer()) : undefined;
    },
    async delete(keys) {
      if (keys.length === 0) return;
      if (bucket) return bucket.delete(keys);
      const { bucket: name } = s3(env);
      // One DELETE per key: DeleteObjects needs a body checksum a presigned request cannot carry.
      await Promise.all(
        keys.map(async (key) => {
          const res = await s3Fetch(env, new DeleteObjectCommand({ Bucket: name, Key: key }), { method: "DELETE" });
          await res.body?.cancel();
          if (!res.ok && res.status !== 404) throw new Error(`Storage answered ${res.status} to DELETE ${key}.`);
        }),
      );
    },
    async sha256(key) {
      if (bucket) {
        const obj = await bucket.get(key);
        return obj ? digestStream(obj.body) : undefined;
      }
      const res = await s3Get(env, key);
      return res ? digestStream(res.body!) : undefined;
    },
    async readRange(key, offset, length) {
      if (bucket) {
        const obj = await bucket.get(key, { range: { offset, length } });
        return obj ? new Uint8Array(await obj.arrayBuffer()) : undefined;
      }
      const res = await s3Get(env, key, `bytes=${offset}-${offset + length - 1}`);
      return res ? new Uint8Array(await res.arrayBuffer()) : undefined;
    },
    async copy(fromKey, toKey) {
      if (bucket) {
        const obj = await bucket.get(fromKey);
        if (!obj) return false;
        // R2 takes a stream only with a known length.
        const sized = new FixedLengthStream(obj.size);
        await Promise.all([
          obj.body.pipeTo(sized.writable),
          bucket.put(toKey, sized.readable, { httpMetadata: obj.httpMetadata }),
        ]);
        return true;
      }
      const { client, bucket: name } = s3(env);
      const source = `${name}/${fromKey.split("/").map(encodeURIComponent).join("/")}`;
      const command = new CopyObjectCommand({ Bucket: name, Key: toKey, CopySource: source });
      const url = await getSignedUrl(client, command, {
        expiresIn: 60,
        unhoistableHeaders: new Set(["x-amz-copy-source"]),
      });
      const res = await fetch(url, { method: "PUT", headers: { "x-amz-copy-source": source } });
      const text = await res.text();
      if (res.status === 404) return false;
      // S3 may answer 200 with an <Error> body when a copy fails part-way.
      if (!res.ok || text.includes("<Error>"))
        throw new Error(`Storage answered ${res.status} to COPY ${fromKey} → ${toKey}: ${text.slice(0, 200)}`);
      return true;
    },
    async list(prefix) {
      const keys: string[] = [];
      let cursor: string | undefined;
      if (bucket) {
        do {
          const page = await bucket.list({ prefix, cursor });
          keys.push(...page.objects.map((o) => o.key));
          cursor = page.truncated ? page.cursor : undefined;
        } while (cursor);
        return keys;
      }
      // The XML answer read with patterns (no DOMParser in workerd); keys are XML-escaped.
      const unxml = (x: string) =>
        x
          .replace(/&lt;/g, "<")
          .replace(/&gt;/g, ">")
          .replace(/&quot;/g, '"')
          .replace(/&apos;/g, "'")
          .replace(/&amp;/g, "&");
      do {
        const { client, bucket: name } = s3(env);
        const res = await fetch(
          await getSignedUrl(
            client,
            new ListObjectsV2Command({ Bucket: name, Prefix: prefix, ContinuationToken: cursor }),
            { expiresIn: 60 },
          ),
        );
        const text = await res.text();
        if (!res.ok) throw new Error(`Storage answered ${res.status} to LIST ${prefix}: ${text.slice(0, 200)}`);
        keys.push(...[...text.matchAll(/<Key>([^<]*)<\/Key>/g)].map((m) => unxml(m[1]!)));
        const next = text.match(/<NextContinuationToken>([^<]*)<\/NextContinuationToken>/)?.[1];
        cursor = text.includes("<IsTruncated>true</IsTruncated>") && next ? unxml(next) : undefined;
      } while (cursor);
      return keys;
    },
  };
}
