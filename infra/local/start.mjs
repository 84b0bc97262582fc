#!/usr/bin/env node
/**
 * Brings the whole stack up on 127.0.0.1: applies the D1 migrations, starts the edge in workerd (wrangler dev),
 * seeds a demo tenant, API key and the default models, and writes what scripts need to .state/stack.json.
 * Ctrl-C stops everything in order: the runners first (each finishes its job or hands it back, within
 * RUNNER_GRACE_MS), then the edge, so no job is left `running`. SIGUSR2 restarts the edge alone (the fault suite). Ports and secrets come from the environment (EDGE_PORT, ADMIN_TOKEN, STATE_DIR,
 * LEASE_TTL_MS, S3_ENDPOINT / S3_ACCESS_KEY_ID / S3_SECRET_ACCESS_KEY for another store); `--runners N` (default 1).
 */
import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";

const { values: args } = parseArgs({
  options: {
    runners: { type: "string", default: process.env.RUNNERS ?? "1" },
    // More models: a folder of bundles, or an Optimum Stable Diffusion export (imported into .state/models first).
    models: { type: "string", multiple: true, default: [] },
  },
});
const runnerCount = Math.max(0, Number(args.runners));
const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const stateDir = resolve(root, process.env.STATE_DIR ?? ".state");
const edgePort = Number(process.env.EDGE_PORT ?? 8787);
const edgeUrl = `http://127.0.0.1:${edgePort}`;
mkdirSync(stateDir, { recursive: true });
const statePath = join(stateDir, "stack.json");
const previous = existsSync(statePath) ? JSON.parse(readFileSync(statePath, "utf8")) : {};
const adminToken = process.env.ADMIN_TOKEN ?? previous.admin_token ?? `adm_${randomBytes(24).toString("base64url")}`;
// Seals webhook signing secrets in D1: kept with the state, since a new key could not open the old secrets.
const webhookSecretKey =
  process.env.WEBHOOK_SECRET_KEY ?? previous.webhook_secret_key ?? randomBytes(32).toString("base64");
const persist = join(stateDir, "wrangler");
const wrangler = join(root, "node_modules/.bin/wrangler");
const children = [];

/** The local bucket's S3 credentials, read from wrangler.toml (where wrangler dev takes them from). */
function localS3Credentials() {
  const toml = readFileSync(join(root, "wrangler.toml"), "utf8");
  const accessKeyId = toml.match(/accessKeyId\s*=\s*"([^"]+)"/)?.[1];
  const secretAccessKey = toml.match(/secretAccessKey\s*=\s*"([^"]+)"/)?.[1];
  if (!accessKeyId || !secretAccessKey)
    throw new Error("wrangler.toml has no local_dev.experimental_s3_credentials for the bucket");
  return { accessKeyId, secretAccessKey };
}
const s3 = process.env.S3_ENDPOINT
  ? {
      endpoint: process.env.S3_ENDPOINT,
      accessKeyId: process.env.S3_ACCESS_KEY_ID,
      secretAccessKey: process.env.S3_SECRET_ACCESS_KEY,
    }
  : { endpoint: `${edgeUrl}/cdn-cgi/local/r2/s3`, ...localS3Credentials() };

/**
 * The edge's secrets reach it through a 0600 file (`--env-file`), never its command line, which `ps` shows to every
 * user. An env file replaces .dev.vars for wrangler, so one at the root is passed first and ours overrides it.
 */
const edgeSecretsPath = join(stateDir, "edge.env");
writeFileSync(edgeSecretsPath, "", { mode: 0o600 });
chmodSync(edgeSecretsPath, 0o600);
writeFileSync(
  edgeSecretsPath,
  Object.entries({
    ADMIN_TOKEN: adminToken,
    WEBHOOK_SECRET_KEY: webhookSecretKey,
    S3_ACCESS_KEY_ID: s3.accessKeyId,
    S3_SECRET_ACCESS_KEY: s3.secretAccessKey,
  })
    .map(([name, value]) => `${name}=${JSON.stringify(value ?? "")}\n`)
    .join(""),
);
const devVars = join(root, ".dev.vars");
const edgeEnvFiles = [...(existsSync(devVars) ? [devVars] : []), edgeSecretsPath].flatMap((f) => ["--env-file", f]);

function log(msg) {
  process.stderr.write(`[start] ${msg}\n`);
}

function run(cmd, args, opts = {}) {
  return new Promise((ok, fail) => {
    const p = spawn(cmd, args, {
      cwd: root,
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, CI: "1" },
      ...opts,
    });
    let out = "";
    p.stdout.on("data", (d) => (out += d));
    p.stderr.on("data", (d) => (out += d));
    p.on("exit", (code) =>
      code === 0 ? ok(out) : fail(new Error(`${cmd} ${args.join(" ")} exited ${code}:\n${out}`)),
    );
  });
}

/** How long a runner may take to finish its job on shutdown before handing it back (its --grace-ms). */
const runnerGraceMs = Number(process.env.RUNNER_GRACE_MS ?? 20_000);
const exited = (c) =>
  c.exitCode !== null || c.signalCode !== null ? Promise.resolve() : new Promise((r) => c.once("exit", r));
const pause = (ms) => new Promise((r) => setTimeout(r, ms).unref());
/** The edge runs in its own process group: a terminal's Ctrl-C reaches it only through stopAll, after the runners. */
const signalGroup = (c, signal) => {
  try {
    process.kill(-c.pid, signal);
  } catch {}
};
let edgeChild = null;
let stopping = null;

/** Runners first (they need the edge to hand their jobs back), then the edge; each bounded, then killed. */
function stopAll(code = 0) {
  stopping ??= (async () => {
    const runners = children.filter((c) => c !== edgeChild && c.exitCode === null && c.signalCode === null);
    if (runners.length) log(`stopping ${runners.length} runner(s): each finishes or hands back its job`);
    for (const r of runners) r.kill("SIGTERM");
    await Promise.race([Promise.all(runners.map(exited)), pause(runnerGraceMs + 10_000)]);
    for (const r of runners) if (r.exitCode === null && r.signalCode === null) r.kill("SIGKILL");
    if (edgeChild && edgeChild.exitCode === null && edgeChild.signalCode === null) {
      signalGroup(edgeChild, "SIGTERM");
      await Promise.race([exited(edgeChild), pause(5_000)]);
      signalGroup(edgeChild, "SIGKILL");
    }
    process.exit(code);
  })();
}
process.on("SIGINT", () => (log("stopping"), stopAll(0)));
process.on("SIGTERM", () => stopAll(0));
// Whoever reads the launcher's output may leave first (a closed pipe): lose the lines, not the shutdown.
for (const stream of [process.stdout, process.stderr])
  stream.on("error", (err) => {
    if (err.code !== "EPIPE") throw err;
  });

async function api(method, path, token, body, headers = {}) {
  const res = await fetch(`${edgeUrl}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body ? { "content-type": "application/json" } : {}), ...headers },
    body: body ? JSON.stringify(body) : undefined,
  });
  const json = await res.json().catch(() => null);
  if (!res.ok) throw new Error(`${method} ${path} → ${res.status} ${JSON.stringify(json)}`);
  return json;
}

async function waitForEdge(deadlineMs) {
  const end = Date.now() + deadlineMs;
  while (Date.now() < end) {
    try {
      if ((await fetch(`${edgeUrl}/healthz`)).ok) return;
    } catch {}
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`the edge did not answer on ${edgeUrl} within ${deadlineMs / 1000} s`);
}

/**
 * The folders of bundles the runners serve: gpu-runner/models, .state/models (where `npm run models -- import`
 * writes), and each --models folder; an export given to --models is imported into .state/models first.
 */
async function modelDirs() {
  const imported = join(stateDir, "models");
  const dirs = [join(root, "gpu-runner/models")];
  for (const arg of args.models) {
    const path = resolve(process.env.INIT_CWD ?? process.cwd(), arg);
    if (existsSync(join(path, "model_index.json"))) {
      log(`importing the export ${path}`);
      await run(process.execPath, [
        join(root, "gpu-runner/src/import/cli.ts"),
        "import",
        path,
        "--out",
        imported,
        "--force",
      ]);
    } else if (existsSync(path)) dirs.push(path);
    else throw new Error(`--models ${arg}: no such folder`);
  }
  if (existsSync(imported)) dirs.push(imported);
  return dirs;
}

/** Registers every model bundle in `dirs` with the limits its manifest implies. */
async function registerModels(dirs) {
  const registered = [];
  // Node 22 strips the types of the edge's TypeScript module: one mapping from manifest to model limits.
  const { modelSpecFromManifest } = await import("@imagegen/edge/models");
  for (const dir of dirs)
    for (const name of readdirSync(dir)) {
      const path = join(dir, name, "manifest.json");
      if (!existsSync(path)) continue;
      const manifest = JSON.parse(readFileSync(path, "utf8"));
      if (manifest.kind !== "diffusion") continue;
      await api("PUT", `/admin/v1/models/${manifest.name}`, adminToken, {
        family: manifest.family,
        // The edge takes display names of at most 128 characters; a bundle's description may be longer.
        display_name:
          (manifest.description ?? manifest.name).length <= 128
            ? (manifest.description ?? manifest.name)
            : `${manifest.description.slice(0, 127)}…`,
        spec: modelSpecFromManifest(manifest),
      });
      registered.push(manifest.name);
    }
  return registered;
}

/**
 * Publishes the add-ons that ship with the model bundles (`<bundle>/addons/`): LoRA files as they are, ControlNet
 * bundles as tar archives. Each goes into the bucket and is registered as a public add-on of the demo tenant.
 */
async function registerDemoAddons(tenantId, apiKey) {
  const dir = join(root, "gpu-runner/models");
  if (!existsSync(dir)) return [];
  const { S3Client, PutObjectCommand } = await import("@aws-sdk/client-s3");
  const { writeTar } = await import("@imagegen/formats/tar");
  const client = new S3Client({
    endpoint: s3.endpoint,
    region: "auto",
    forcePathStyle: true,
    credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
  });
  const existing = new Set((await api("GET", "/v1/addons", apiKey)).data.filter((a) => a.owned).map((a) => a.name));
  const published = [];
  for (const bundle of readdirSync(dir)) {
    const manifestPath = join(dir, bundle, "manifest.json");
    const addonsDir = join(dir, bundle, "addons");
    if (!existsSync(manifestPath) || !existsSync(addonsDir)) continue;
    const family = JSON.parse(readFileSync(manifestPath, "utf8")).family;
    for (const entry of readdirSync(addonsDir)) {
      let kind, name, bytes;
      if (entry.endsWith(".safetensors")) {
        [kind, name, bytes] = ["lora", entry.replace(/\.safetensors$/, ""), readFileSync(join(addonsDir, entry))];
      } else if (existsSync(join(addonsDir, entry, "manifest.json"))) {
        const files = [];
        const walk = (rel) => {
          for (const f of readdirSync(join(addonsDir, entry, rel), { withFileTypes: true })) {
            const path = rel ? `${rel}/${f.name}` : f.name;
            if (f.isDirectory()) walk(path);
            else files.push({ path, data: readFileSync(join(addonsDir, entry, path)) });
          }
        };
        walk("");
        [kind, name, bytes] = ["controlnet", entry, Buffer.from(writeTar(files))];
      } else continue;
      if (existing.has(name)) continue;
      existing.add(name);
      const key = `public/addons/${name}-${createHash("sha256").update(bytes).digest("hex").slice(0, 12)}`;
      await client.send(
        new PutObjectCommand({ Bucket: "imagegen", Key: key, Body: bytes, ContentType: "application/octet-stream" }),
      );
      await api("POST", "/admin/v1/addons", adminToken, {
        tenant_id: tenantId,
        kind,
        name,
        family,
        visibility: "public",
        status: "ready",
        storage_key: key,
        sha256: createHash("sha256").update(bytes).digest("hex"),
        size_bytes: bytes.byteLength,
      });
      published.push(name);
    }
  }
  return published;
}

function startEdge() {
  log(`starting the edge on ${edgeUrl}`);
  const edge = spawn(
    wrangler,
    [
      "dev",
      "--ip",
      "127.0.0.1",
      "--port",
      String(edgePort),
      "--persist-to",
      persist,
      ...edgeEnvFiles,
      // The local stack allows private webhook destinations (its receivers live on 127.0.0.1) unless told otherwise.
      ...(process.env.ALLOW_PRIVATE_WEBHOOKS ? [] : ["--var", "ALLOW_PRIVATE_WEBHOOKS:true"]),
      ...(process.env.LEASE_TTL_MS ? ["--var", `LEASE_TTL_MS:${process.env.LEASE_TTL_MS}`] : []),
      ...(process.env.TIMING_LOG ? ["--var", "TIMING_LOG:true"] : []),
      // A webhook receiver on this machine (examples, tests) is a private destination, refused unless allowed.
      ...(process.env.ALLOW_PRIVATE_WEBHOOKS
        ? ["--var", `ALLOW_PRIVATE_WEBHOOKS:${process.env.ALLOW_PRIVATE_WEBHOOKS}`]
        : []),
      "--var",
      `S3_ENDPOINT:${s3.endpoint}`,
      "--show-interactive-dev-session=false",
    ],
    {
      cwd: root,
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, CI: "1" },
      detached: true,
    },
  );
  edgeChild = edge;
  children.push(edge);
  const edgeLog = [];
  const keep = (d) => edgeLog.push(String(d)) > 200 && edgeLog.shift();
  edge.stdout.on("data", keep);
  edge.stderr.on("data", keep);
  // TIMING_LOG: the edge's server-timing lines go to this process's output (the latency bench reads them).
  if (process.env.TIMING_LOG) {
    let partial = "";
    edge.stdout.on("data", (d) => {
      const lines = (partial + d).split("\n");
      partial = lines.pop();
      for (const line of lines) if (line.includes('"server_timing"')) process.stdout.write(`${line}\n`);
    });
  }
  edge.on("exit", (code) => {
    if (stopping || edgeChild !== edge) return;
    log(`the edge exited (${code}); its last output:\n${edgeLog.join("")}`);
    stopAll(code ?? 1);
  });
  return edge;
}

/** An admin call whose failure the caller reads (the status) instead of an exception. */
async function adminCall(method, path) {
  const res = await fetch(`${edgeUrl}${path}`, { method, headers: { authorization: `Bearer ${adminToken}` } });
  return { status: res.status, body: await res.json().catch(() => null) };
}

/**
 * Local runner i, with a fresh token: the runner an earlier start registered is reused and its token rotated (the old
 * one dies), so restarts neither pile up runners nor leave tokens live; one is registered when there is none to reuse.
 */
async function localRunner(i) {
  const id = previous.runner_ids?.[i];
  if (id) {
    const rotated = await adminCall("POST", `/admin/v1/runners/${id}/rotate`);
    if (rotated.status === 200) {
      if (rotated.body.status !== "active")
        log(`runner ${i + 1} (${id}) is ${rotated.body.status}: enable it with POST /admin/v1/runners/${id}/enable`);
      return rotated.body;
    }
    // 404: the database was reset; 409: an operator revoked it. Either way, a new runner.
    if (rotated.status !== 404 && rotated.status !== 409)
      throw new Error(`rotating runner ${id} → ${rotated.status} ${JSON.stringify(rotated.body)}`);
  }
  // The most a runner API lease may declare: each local runner declares its own (workers × batch), the edge takes the lower.
  return api("POST", "/admin/v1/runners", adminToken, { name: `local-runner-${i + 1}`, capacity: 64 });
}

/** Runners get their own token only: not the admin token or the store's secret the launcher may hold. */
const { ADMIN_TOKEN: _admin, WEBHOOK_SECRET_KEY: _webhooks, S3_SECRET_ACCESS_KEY: _s3, ...runnerEnv } = process.env;

async function main() {
  log("applying D1 migrations");
  await run(wrangler, ["d1", "migrations", "apply", "imagegen", "--local", "--persist-to", persist]);

  let edge = startEdge();
  await waitForEdge(120_000);
  // SIGUSR2: the edge goes down and comes back on the same state (runners and clients must ride it out).
  process.on("SIGUSR2", async () => {
    if (stopping || !edge) return;
    log("restarting the edge");
    const old = edge;
    // Not the current edge any more: its exit is the restart's, not a crash that stops the stack.
    edge = edgeChild = null;
    signalGroup(old, "SIGTERM");
    await Promise.race([exited(old), pause(5_000)]);
    signalGroup(old, "SIGKILL");
    edge = startEdge();
    await waitForEdge(120_000).then(
      () => log("the edge is back"),
      (err) => (log(String(err)), stopAll(1)),
    );
  });

  let tenant = previous.demo_tenant_id;
  let apiKey = previous.demo_api_key;
  if (
    !tenant ||
    !apiKey ||
    !(await fetch(`${edgeUrl}/v1/models`, { headers: { authorization: `Bearer ${apiKey}` } })).ok
  ) {
    log("seeding the demo tenant and API key");
    tenant = (await api("POST", "/admin/v1/tenants", adminToken, { name: "demo" })).id;
    apiKey = (await api("POST", `/admin/v1/tenants/${tenant}/keys`, adminToken, { name: "demo" })).secret;
  }
  const dirs = await modelDirs();
  const models = await registerModels(dirs);
  // The dashboard's first owner: while the demo tenant has none, a fresh invite link (single use, 7 days).
  let ownerInvite = "";
  try {
    const people = (await api("GET", "/v1/users", apiKey)).data;
    if (!people.some((u) => u.role === "owner")) {
      const email = process.env.OWNER_EMAIL ?? "owner@example.com";
      const invite = await api("POST", `/admin/v1/tenants/${tenant}/invites`, adminToken, { email, role: "owner" });
      ownerInvite = `${invite.url}  (sign up as ${email})`;
    }
  } catch (err) {
    log(`no owner invite: ${err.message}`);
  }
  const demoAddons = await registerDemoAddons(tenant, apiKey);
  if (demoAddons.length) log(`published demo add-ons: ${demoAddons.join(", ")}`);

  const runnerIds = [];
  // Runners an earlier start registered beyond today's count are revoked: no token is left live unused.
  for (const id of (previous.runner_ids ?? []).slice(runnerCount)) await adminCall("DELETE", `/admin/v1/runners/${id}`);
  for (let i = 0; i < runnerCount; i++) {
    const { token, id } = await localRunner(i);
    runnerIds.push(id);
    const runner = spawn(
      process.execPath,
      [
        join(root, "gpu-runner/src/runner/serve.ts"),
        "--workers",
        process.env.RUNNER_WORKERS ?? "1",
        "--models",
        dirs.join(":"),
        "--grace-ms",
        String(runnerGraceMs),
      ],
      {
        cwd: root,
        stdio: ["ignore", "inherit", "pipe"],
        env: { ...runnerEnv, EDGE_URL: edgeUrl, RUNNER_TOKEN: token },
      },
    );
    children.push(runner);
    const tag = `[runner ${i + 1}] `;
    runner.stderr.on("data", (d) => process.stderr.write(String(d).replace(/^(?=.)/gm, tag)));
    runner.on("exit", (code) => log(`runner ${i + 1} (${id}) exited (${code})`));
  }

  const model = models.includes("tiny-shapes") ? "tiny-shapes" : (models[0] ?? "tiny-shapes");
  const state = {
    edge_url: edgeUrl,
    dashboard_url: `${edgeUrl}/dashboard`,
    openapi_url: `${edgeUrl}/v1/openapi.json`,
    admin_token: adminToken,
    webhook_secret_key: webhookSecretKey,
    demo_tenant_id: tenant,
    demo_api_key: apiKey,
    models,
    default_model: model,
    runners: runnerCount,
    runner_ids: runnerIds,
    // The launcher's process and the edge's own group (it is detached): what a test kills if the launcher hangs.
    launcher_pid: process.pid,
    edge_pid: edge?.pid,
  };
  writeFileSync(statePath, JSON.stringify(state, null, 2) + "\n", { mode: 0o600 });
  chmodSync(statePath, 0o600); // mode applies only to a file it creates

  // One generation on the default model, so the first command shows the whole path working.
  let demo = "";
  if (runnerCount > 0 && models.length > 0 && process.env.SKIP_DEMO !== "1") {
    try {
      const g = await api(
        "POST",
        "/v1/generations",
        apiKey,
        { model, prompt: "a large red circle on the left, blue background", seed: 1 },
        { prefer: "wait=60" },
      );
      demo =
        g.status === "succeeded"
          ? `  first image ${g.images[0].url}\n               (${g.request.sampler}, ${g.request.steps} steps, ${Math.round(g.timings.total_ms)} ms request to URL)`
          : `  first image ${g.status}: ${g.error?.message ?? "still running"}`;
    } catch (err) {
      demo = `  first image failed: ${err.message}`;
    }
  }
  // $KEY, not the key: what the launcher prints ends up in logs and scrollback.
  const curl = `curl -s ${edgeUrl}/v1/generations -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" -H "Prefer: wait=30" -d '{"model":"${model}","prompt":"a large red circle on the left, blue background"}'`;
  process.stdout.write(
    [
      "",
      `imagegen is up (Ctrl-C stops it)`,
      `  edge        ${edgeUrl}`,
      `  dashboard   ${state.dashboard_url}  (${ownerInvite ? "sign up through the owner invite below" : "sign in with your email and password"})`,
      ...(ownerInvite ? [`  owner invite ${ownerInvite}`] : []),
      `  OpenAPI     ${state.openapi_url}`,
      `  demo key    in the state file: KEY=$(node -p "require('${statePath}').demo_api_key")`,
      `  models      ${models.length ? models.join(", ") : "(none registered yet)"}`,
      `  runners     ${runnerCount}`,
      `  state file  ${statePath}`,
      ...(demo ? [demo] : []),
      "",
      "Try:",
      `  ${curl}`,
      "",
    ].join("\n"),
  );
}

main().catch((err) => {
  log(String(err?.stack ?? err));
  stopAll(1);
});
