/** Drives the Worker as a client would: real HTTP requests through its fetch handler, real D1 and Durable Objects. */
import { env, exports } from "cloudflare:workers";
import { sha256Hex } from "../src/lib/crypto.ts";

/** The Worker under test (its default export), as `wrangler.toml` declares it. */
const worker = (exports as unknown as { default: Fetcher }).default;

export const ADMIN = "test-admin-token";

export interface Answer<T = any> {
  status: number;
  headers: Headers;
  body: T;
}

export async function call<T = any>(
  method: string,
  path: string,
  opts: { token?: string; body?: unknown; headers?: Record<string, string>; raw?: BodyInit; signal?: AbortSignal } = {},
): Promise<Answer<T>> {
  const headers: Record<string, string> = { ...opts.headers };
  if (opts.token) headers.authorization = `Bearer ${opts.token}`;
  let body: BodyInit | undefined = opts.raw;
  if (opts.body !== undefined) {
    body = JSON.stringify(opts.body);
    headers["content-type"] ??= "application/json";
  }
  const res = await worker.fetch(
    new Request(`http://edge.test${path}`, { method, headers, body, signal: opts.signal }),
  );
  const text = await res.text();
  return { status: res.status, headers: res.headers, body: text ? JSON.parse(text) : null };
}

export const TINY_SPEC = {
  default_width: 64,
  default_height: 64,
  min_size: 64,
  max_size: 64,
  multiple_of: 64,
  max_images: 8,
  default_sampler: "lcm",
  samplers: {
    ddim: { min_steps: 1, max_steps: 200, default_steps: 50, default_guidance: 4, max_guidance: 20 },
    lcm: { min_steps: 1, max_steps: 8, default_steps: 4, default_guidance: 1.5, max_guidance: 4 },
  },
  supports_lora: true,
  supports_controlnet: true,
  supports_deepcache: true,
  lora_targets: [
    { module: "down_blocks.0.attentions.0.to_q", in_features: 8, out_features: 8 },
    { module: "mid_block.proj", in_features: 16, out_features: 4 },
    // A 3×3 convolution (LoCon): its down weight is the kernel [rank, 16, 3, 3].
    { module: "mid_block.res1.conv1", kind: "conv3x3", in_features: 16, out_features: 16 },
  ],
  lora_max_rank: 8,
  // As the zoo's tiny-shapes bundles declare them (manifest.json "controlnet.residuals").
  controlnet_residuals: [
    "down_block_0_additional_residual",
    "down_block_1_additional_residual",
    "down_block_2_additional_residual",
    "mid_block_additional_residual",
  ],
};

export async function registerModel(
  id = "tiny-shapes",
  family = "tiny-shapes",
  spec: Record<string, unknown> = TINY_SPEC,
) {
  const r = await call("PUT", `/admin/v1/models/${id}`, { token: ADMIN, body: { family, display_name: id, spec } });
  if (r.status !== 200) throw new Error(`model: ${JSON.stringify(r.body)}`);
  return r.body;
}

export async function newTenant(name: string, limits: Record<string, number> = {}, scopes?: string[]) {
  const t = await call("POST", "/admin/v1/tenants", { token: ADMIN, body: { name, limits } });
  if (t.status !== 201) throw new Error(`tenant: ${JSON.stringify(t.body)}`);
  const k = await call("POST", `/admin/v1/tenants/${t.body.id}/keys`, { token: ADMIN, body: scopes ? { scopes } : {} });
  if (k.status !== 201) throw new Error(`key: ${JSON.stringify(k.body)}`);
  return { id: t.body.id as string, key: k.body.secret as string, keyId: k.body.id as string };
}

/** Test runners may hold many leases at once (one stands in for several); capacity tests pass their own. */
export async function newRunner(name = "runner", capacity = 64) {
  const r = await call("POST", "/admin/v1/runners", { token: ADMIN, body: { name, capacity } });
  if (r.status !== 201) throw new Error(`runner: ${JSON.stringify(r.body)}`);
  return { id: r.body.id as string, token: r.body.token as string };
}

export async function registerAddon(tenantId: string, name: string, opts: Record<string, unknown> = {}) {
  const r = await call("POST", "/admin/v1/addons", {
    token: ADMIN,
    body: {
      tenant_id: tenantId,
      kind: "lora",
      name,
      family: "tiny-shapes",
      storage_key: `addons/${tenantId}/${name}`,
      ...opts,
    },
  });
  if (r.status !== 201) throw new Error(`addon: ${JSON.stringify(r.body)}`);
  return r.body.id as string;
}

export const generate = (key: string, body: Record<string, unknown> = {}, headers: Record<string, string> = {}) =>
  call("POST", "/v1/generations", {
    token: key,
    body: { prompt: "a large red circle on the left, blue background", ...body },
    headers,
  });

/** A lease call alone: the lease stays provisional (no attempt counted) until acknowledged. */
export const leaseUnacked = (runnerToken: string, body: Record<string, unknown> = {}) =>
  call("POST", "/internal/v1/lease", {
    token: runnerToken,
    body: { models: ["tiny-shapes"], wait_ms: 0, capacity: 64, ...body },
  });

/** The first heartbeat acknowledges a lease: the attempt counts and the full lease deadline starts. */
export const acknowledge = (runnerToken: string, leased: { lease_id: string; job: { id: string } }) =>
  call("POST", `/internal/v1/jobs/${leased.job.id}/heartbeat`, {
    token: runnerToken,
    body: { lease_id: leased.lease_id },
  });

/** What a runner does on receiving a job: lease it and acknowledge at once. */
export async function lease(runnerToken: string, body: Record<string, unknown> = {}) {
  const leased = await leaseUnacked(runnerToken, body);
  if (leased.status === 200) {
    const ack = await acknowledge(runnerToken, leased.body);
    if (ack.status !== 200) throw new Error(`ack: ${JSON.stringify(ack.body)}`);
  }
  return leased;
}

/** What a runner does at the end of a job: PUT each image where the lease said, then report them. */
export async function uploadOutputs(
  leased: { outputs: Array<{ index: number; storage_key: string }> },
  count = leased.outputs.length,
) {
  const images = [];
  for (const out of leased.outputs.slice(0, count)) {
    const bytes = new TextEncoder().encode(`png ${out.storage_key}`);
    const sha256 = await sha256Hex(bytes);
    // The store verifies the checksum signed into the PUT and keeps it, as R2 does.
    await env.BUCKET!.put(out.storage_key, bytes, { httpMetadata: { contentType: "image/png" }, sha256 });
    images.push({
      index: out.index,
      storage_key: out.storage_key,
      width: 64,
      height: 64,
      seed: 1 + out.index,
      sha256,
      size_bytes: bytes.byteLength,
    });
  }
  return images;
}

export async function completeLeased(
  runnerToken: string,
  leased: any,
  opts: { count?: number; timings?: Record<string, number> } = {},
) {
  const images = await uploadOutputs(leased, opts.count);
  return call("POST", `/internal/v1/jobs/${leased.job.id}/complete`, {
    token: runnerToken,
    body: { lease_id: leased.lease_id, images, timings: opts.timings ?? {} },
  });
}
