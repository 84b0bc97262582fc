/**
 * A stand-in edge and store on 127.0.0.1 for the runner's tests (runner*.test.ts): the runner API's lease (long poll),
 * heartbeat, outputs, complete and fail, presigned PUTs checked against their signed checksum, add-on files, and
 * faults to switch on (storage down or hung, lost leases, cancel). It records every call, and how many leases the
 * runner held at once (leased, not yet completed, failed or lost). As the real edge does (LEASE_ACK_TIMEOUT_MS), a
 * lease nobody acknowledges goes back to the queue: a long poll from a runner that has just stopped may still be
 * answered (its hang-up not yet seen by this process), and its job must not vanish with it.
 */
import { createHash } from "node:crypto";
import { createServer, type IncomingMessage, type Server } from "node:http";
import type { LeasedJob } from "../src/runner/edge-client.ts";

export interface FakeEdge {
  url: string;
  server: Server;
  /** Jobs handed out once each. */
  queue: Array<Record<string, unknown>>;
  calls: Array<{ path: string; body: any; at: number }>;
  /** Storage answers 503 for this long after the first upload attempt of each object. */
  storageDownMs: number;
  firstAttempt: Map<string, number>;
  uploads: Map<string, number>;
  cancel: Set<string>;
  /** Heartbeats on these jobs answer 409 (the lease is gone). */
  lost: Set<string>;
  /** The lease answer waits this long (a long poll in progress). */
  leaseDelayMs: number;
  /** Lease calls whose runner hung up before the answer. */
  hungUp: number;
  /** Files served to GET /files/<name> (add-ons). */
  files: Map<string, Uint8Array>;
  /** Storage takes every request and never answers (a hung store). */
  storageHang: boolean;
  /** How long the upload URLs live (their expiry bounds the runner's tries). */
  uploadTtlMs: number;
  /** The lease TTL heartbeats announce (none when undefined). */
  leaseTtlMs: number | undefined;
  /** Jobs leased and not yet completed, failed or lost; the most held at once. */
  held: Set<string>;
  maxHeld: number;
  /** A lease not acknowledged in the lease answer and without any call on its job this long goes back to the queue. */
  ackTimeoutMs: number;
  /** Leases that went back that way. */
  unacknowledged: number;
  /** Jobs each answered lease call brought (`max_jobs` asks for several). */
  leaseCalls: number[];
  /** Refuse `max_jobs` as an edge older than the field does (400 unknown_parameter). */
  refuseMaxJobs: boolean;
}

async function body(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

export async function fakeEdge(): Promise<FakeEdge> {
  const edge: FakeEdge = {
    url: "",
    server: null as unknown as Server,
    queue: [],
    calls: [],
    storageDownMs: 0,
    firstAttempt: new Map(),
    uploads: new Map(),
    cancel: new Set(),
    lost: new Set(),
    leaseDelayMs: 0,
    hungUp: 0,
    files: new Map(),
    storageHang: false,
    uploadTtlMs: 30_000,
    leaseTtlMs: undefined,
    held: new Set(),
    maxHeld: 0,
    ackTimeoutMs: 2_000,
    unacknowledged: 0,
    leaseCalls: [],
    refuseMaxJobs: false,
  };
  edge.server = createServer(async (req, res) => {
    const raw = await body(req);
    const path = req.url!;
    if (path.startsWith("/files/")) {
      const file = edge.files.get(path.slice("/files/".length));
      return file ? res.writeHead(200).end(file) : res.writeHead(404).end();
    }
    if (path.startsWith("/store/")) {
      if (edge.storageHang) return;
      if (!edge.firstAttempt.has(path)) edge.firstAttempt.set(path, Date.now());
      if (Date.now() < edge.firstAttempt.get(path)! + edge.storageDownMs) return res.writeHead(503).end("down");
      // As S3 and R2 do with a signed x-amz-checksum-sha256: other bytes are refused.
      if (req.headers["x-amz-checksum-sha256"] !== createHash("sha256").update(raw).digest("base64"))
        return res.writeHead(400).end("<Error><Code>BadDigest</Code></Error>");
      edge.uploads.set(path, raw.byteLength);
      return res.writeHead(200).end();
    }
    const json = raw.length ? JSON.parse(raw.toString()) : null;
    edge.calls.push({ path, body: json, at: Date.now() });
    const reply = (status: number, payload?: unknown) =>
      res.writeHead(status, { "content-type": "application/json" }).end(payload ? JSON.stringify(payload) : undefined);
    if (path === "/internal/v1/lease") {
      if (edge.refuseMaxJobs && json?.max_jobs !== undefined)
        return reply(400, { error: { code: "unknown_parameter", message: 'Unrecognized key: "max_jobs"' } });
      if (edge.leaseDelayMs) {
        let closed = false;
        res.on("close", () => (closed = true));
        await new Promise((r) => setTimeout(r, edge.leaseDelayMs));
        if (closed) {
          edge.hungUp++;
          return;
        }
      }
      let gone = false;
      res.on("close", () => (gone = !res.writableFinished));
      const jobs = edge.queue.splice(0, Math.max(1, json?.max_jobs ?? 1));
      if (jobs.length === 0) {
        await new Promise((r) => setTimeout(r, 50));
        return reply(204);
      }
      // A runner that stopped an instant ago may still have a lease call in this process's queue: as the real edge
      // does (an unacknowledged lease goes back), the jobs return to the queue rather than to nobody.
      await new Promise((r) => setTimeout(r, 5));
      if (gone || req.socket.destroyed) return void edge.queue.unshift(...jobs);
      edge.leaseCalls.push(jobs.length);
      const answers = jobs.map((job) => {
        const id = (job.job as { id: string }).id;
        edge.held.add(id);
        if (!json?.acknowledge) {
          const leasedAt = edge.calls.length;
          setTimeout(() => {
            const prefix = `/internal/v1/jobs/${id}/`;
            if (edge.calls.slice(leasedAt).some((c) => c.path.startsWith(prefix))) return;
            edge.held.delete(id);
            edge.queue.unshift(job);
            edge.unacknowledged++;
          }, edge.ackTimeoutMs).unref();
        }
        // An edge that acknowledges in the lease when asked (`acknowledge`), as the real one does.
        return json?.acknowledge ? { ...job, acknowledged: true, lease_ttl_ms: edge.leaseTtlMs ?? 30_000 } : job;
      });
      edge.maxHeld = Math.max(edge.maxHeld, edge.held.size);
      return reply(200, json?.max_jobs === undefined ? answers[0] : { jobs: answers });
    }
    const m = path.match(/^\/internal\/v1\/jobs\/([^/]+)\/(heartbeat|outputs|complete|fail)$/);
    if (!m) return reply(404, { error: { code: "route_not_found", message: path } });
    if (m[2] === "heartbeat" && edge.lost.has(m[1]!)) {
      edge.held.delete(m[1]!);
      return reply(409, { error: { code: "lease_expired", message: "expired" } });
    }
    // A canceled job is no longer the runner's to hold (the edge counts only running jobs).
    if (m[2] === "complete" || m[2] === "fail" || (m[2] === "heartbeat" && edge.cancel.has(m[1]!)))
      edge.held.delete(m[1]!);
    if (m[2] === "heartbeat")
      return reply(200, {
        cancel: edge.cancel.has(m[1]!),
        lease_expires_at: null,
        ...(edge.leaseTtlMs ? { lease_ttl_ms: edge.leaseTtlMs } : {}),
      });
    if (m[2] === "outputs") {
      const uploads = json.images.map((i: { index: number; sha256: string }) => ({
        index: i.index,
        storage_key: `out/${m[1]}/${i.index}.png`,
        put_url: `${edge.url}/store/${m[1]}/${i.index}.png`,
        headers: {
          "content-type": "image/png",
          "x-amz-checksum-sha256": Buffer.from(i.sha256, "hex").toString("base64"),
        },
        expires_at: new Date(Date.now() + edge.uploadTtlMs).toISOString(),
      }));
      return reply(200, { uploads });
    }
    return reply(200, { job: {} });
  });
  await new Promise<void>((r) => edge.server.listen(0, "127.0.0.1", r));
  const port = (edge.server.address() as { port: number }).port;
  edge.url = `http://127.0.0.1:${port}`;
  return edge;
}

export function leased(edge: FakeEdge, id: string, request: Record<string, unknown> = {}) {
  return {
    lease_id: `lease_${id}`,
    lease_expires_at: new Date(Date.now() + 30_000).toISOString(),
    job: {
      id,
      tenant_id: "ten_x",
      attempt: 1,
      queued_ms: 1,
      request: {
        model: "tiny-shapes-random",
        prompt: "a red circle",
        negative_prompt: "",
        width: 64,
        height: 64,
        n: 1,
        seed: 1,
        sampler: "ddim",
        steps: 4,
        guidance: 3,
        loras: [],
        controlnets: [],
        cache: { mode: "off" },
        output_ttl_seconds: 3600,
        metadata: {},
        ...request,
      },
    },
    outputs: [{ index: 0, storage_key: `out/${id}/0.png`, content_type: "image/png" }],
    addons: [] as LeasedJob["addons"],
  };
}

export async function until(what: string, fn: () => boolean, ms = 30_000) {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
