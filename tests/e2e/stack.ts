/**
 * Starts the whole local stack the way a user does (`npm start`), on its own port and state folder, and stops it
 * (every process it started) afterwards.
 */
import { GetObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { getSignedUrl } from "@aws-sdk/s3-request-presigner";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

export interface Stack {
  edgeUrl: string;
  adminToken: string;
  apiKey: string;
  tenantId: string;
  models: string[];
  defaultModel: string;
  logs: () => string;
  /** The launcher's process id (SIGUSR2 restarts the edge). */
  pid: number;
  stop: () => Promise<void>;
}

const root = resolve(import.meta.dirname, "../..");

export async function startStack(
  opts: { runners?: number; port?: number; env?: Record<string, string>; root?: string } = {},
): Promise<Stack> {
  // `root`: another checkout of the repository to start (the latency bench's baseline).
  const home = opts.root ?? root;
  const stateDir = mkdtempSync(join(tmpdir(), "imagegen-e2e-"));
  const port = opts.port ?? 20000 + Math.floor(Math.random() * 20000);
  const child: ChildProcess = spawn(
    process.execPath,
    [join(home, "infra/local/start.mjs"), "--runners", String(opts.runners ?? 1)],
    {
      cwd: home,
      env: { ...process.env, STATE_DIR: stateDir, EDGE_PORT: String(port), ...opts.env },
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    },
  );
  let output = "";
  child.stdout!.on("data", (d) => (output += d));
  child.stderr!.on("data", (d) => (output += d));
  const statePath = join(stateDir, "stack.json");
  const deadline = Date.now() + 200_000;
  while (!existsSync(statePath) || !output.includes("is up")) {
    if (child.exitCode !== null) throw new Error(`the stack exited (${child.exitCode}):\n${output}`);
    if (Date.now() > deadline) throw new Error(`the stack did not come up:\n${output}`);
    await new Promise((r) => setTimeout(r, 250));
  }
  const state = JSON.parse(readFileSync(statePath, "utf8"));
  return {
    edgeUrl: state.edge_url,
    adminToken: state.admin_token,
    apiKey: state.demo_api_key,
    tenantId: state.demo_tenant_id,
    models: state.models,
    defaultModel: state.default_model,
    logs: () => output,
    pid: child.pid!,
    stop: async () => {
      if (child.exitCode === null) {
        // The launcher stops its runners first (each finishes or hands back its job), then the edge.
        process.kill(-child.pid!, "SIGINT");
        const end = Date.now() + 45_000;
        while (child.exitCode === null && Date.now() < end) await new Promise((r) => setTimeout(r, 100));
        if (child.exitCode === null) process.kill(-child.pid!, "SIGKILL");
      }
      // The edge has a process group of its own: never leave it behind.
      const edgePid = JSON.parse(readFileSync(statePath, "utf8")).edge_pid;
      try {
        if (edgePid) process.kill(-edgePid, "SIGKILL");
      } catch {}
      rmSync(stateDir, { recursive: true, force: true });
    },
  };
}

export async function api<T = any>(
  stack: Stack,
  method: string,
  path: string,
  token: string,
  body?: unknown,
  headers: Record<string, string> = {},
) {
  const res = await fetch(`${stack.edgeUrl}${path}`, {
    method,
    headers: {
      authorization: `Bearer ${token}`,
      ...(body !== undefined ? { "content-type": "application/json" } : {}),
      ...headers,
    },
    body: body !== undefined ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, body: (text ? JSON.parse(text) : null) as T };
}

/** Signs a GET for `key` as the edge does, with the local bucket's credentials from wrangler.toml. */
export async function presignGet(stack: Stack, key: string, expiresIn: number): Promise<string> {
  const toml = readFileSync(join(root, "wrangler.toml"), "utf8");
  const client = new S3Client({
    endpoint: `${stack.edgeUrl}/cdn-cgi/local/r2/s3`,
    region: "auto",
    forcePathStyle: true,
    credentials: {
      accessKeyId: toml.match(/accessKeyId\s*=\s*"([^"]+)"/)![1]!,
      secretAccessKey: toml.match(/secretAccessKey\s*=\s*"([^"]+)"/)![1]!,
    },
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
  });
  return getSignedUrl(client, new GetObjectCommand({ Bucket: "imagegen", Key: key }), { expiresIn });
}

/** A runner process of the test's own (so the test can kill it), serving the stack's models. */
export async function spawnRunner(
  stack: Stack,
  name: string,
  opts: { args?: string[]; env?: Record<string, string> } = {},
): Promise<ChildProcess & { output: () => string }> {
  const r = await api(stack, "POST", "/admin/v1/runners", stack.adminToken, { name });
  const child = spawn(
    process.execPath,
    [join(root, "gpu-runner/src/runner/serve.ts"), "--heartbeat-ms", "500", ...(opts.args ?? [])],
    {
      cwd: root,
      env: { ...process.env, EDGE_URL: stack.edgeUrl, RUNNER_TOKEN: r.body.token, ...opts.env },
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  let output = "";
  child.stdout!.on("data", (d) => (output += d));
  child.stderr!.on("data", (d) => (output += d));
  return Object.assign(child, { output: () => output });
}

export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined | false>,
  timeoutMs = 60_000,
): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
