#!/usr/bin/env node
/**
 * Brings the whole stack up on 127.0.0.1: applies the D1 migrations, starts the edge in workerd (wrangler dev),
 * seeds a demo tenant, API key and the default models, and writes what scripts need to .state/stack.json.
 * Ctrl-C stops everything. Ports and secrets come from the environment (EDGE_PORT, ADMIN_TOKEN, STATE_DIR,
 * LEASE_TTL_MS, S3_ENDPOINT / S3_ACCESS_KEY_ID / S3_SECRET_ACCESS_KEY for another store); `--runners N` (default 1).
 */
import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
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
const persist = join(stateDir, "wrangler");
const wrangler = join(root, "node_modules/.bin/wrangler");
const children = [];

/** The local bucket's S3 credentials, read from wrangler.toml (where wrangler dev takes them from). */
function localS3Credentials() {
  const toml = readFileSync(join(root, "wrangler.toml"), "utf8");
  const accessKeyId = toml.match(/accessKeyId\s*=\s*"([^"]+)"/)?.[1];
  const secretAccessKey = toml.match(/secretAccessKey\s*=\s*"([^"]+)"/)?.[1];
  if (!accessKeyId || !secretAccessKey) throw new Error("wrangler.toml has no local_dev.experimental_s3_credentials for the bucket");
  return { accessKeyId, secretAccessKey };
}
const s3 = process.env.S3_ENDPOINT
  ? { endpoint: process.env.S3_ENDPOINT, accessKeyId: process.env.S3_ACCESS_KEY_ID, secretAccessKey: process.env.S3_SECRET_ACCESS_KEY }
  : { endpoint: `${edgeUrl}/cdn-cgi/local/r2/s3`, ...localS3Credentials() };

function log(msg) {
  process.stderr.write(`[start] ${msg}\n`);
}

function run(cmd, args, opts = {}) {
  return new Promise((ok, fail) => {
    const p = spawn(cmd, args, { cwd: root, stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, CI: "1" }, ...opts });
    let out = "";
    p.stdout.on("data", (d) => (out += d));
    p.stderr.on("data", (d) => (out += d));
    p.on("exit", (code) => (code === 0 ? ok(out) : fail(new Error(`${cmd} ${args.join(" ")} exited ${code}:\n${out}`))));
  });
}

function stopAll(code = 0) {
  for (const c of children) if (c.exitCode === null) c.kill("SIGTERM");
  setTimeout(() => process.exit(code), 500).unref();
}
process.on("SIGINT", () => (log("stopping"), stopAll(0)));
process.on("SIGTERM", () => stopAll(0));

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
      await run(process.execPath, [join(root, "gpu-runner/src/import/cli.ts"), "import", path, "--out", imported, "--force"]);
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
  for (const dir of dirs) for (const name of readdirSync(dir)) {
    const path = join(dir, name, "manifest.json");
    if (!existsSync(path)) continue;
    const manifest = JSON.parse(readFileSync(path, "utf8"));
    if (manifest.kind !== "diffusion") continue;
    await api("PUT", `/admin/v1/models/${manifest.name}`, adminToken, {
      family: manifest.family,
      // The edge takes display names of at most 128 characters; a bundle's description may be longer.
      display_name: (manifest.description ?? manifest.name).length <= 128 ? manifest.description ?? manifest.name : `${manifest.description.slice(0, 127)}…`,
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
      await client.send(new PutObjectCommand({ Bucket: "imagegen", Key: key, Body: bytes, ContentType: "application/octet-stream" }));
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

async function main() {
  log("applying D1 migrations");
  await run(wrangler, ["d1", "migrations", "apply", "imagegen", "--local", "--persist-to", persist]);

  log(`starting the edge on ${edgeUrl}`);
  const edge = spawn(wrangler, ["dev", "--ip", "127.0.0.1", "--port", String(edgePort), "--persist-to", persist, "--var", `ADMIN_TOKEN:${adminToken}`,
    ...(process.env.LEASE_TTL_MS ? ["--var", `LEASE_TTL_MS:${process.env.LEASE_TTL_MS}`] : []),
    "--var", `S3_ENDPOINT:${s3.endpoint}`, "--var", `S3_ACCESS_KEY_ID:${s3.accessKeyId}`, "--var", `S3_SECRET_ACCESS_KEY:${s3.secretAccessKey}`, "--show-interactive-dev-session=false"], {
    cwd: root,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, CI: "1" },
  });
  children.push(edge);
  const edgeLog = [];
  const keep = (d) => edgeLog.push(String(d)) > 200 && edgeLog.shift();
  edge.stdout.on("data", keep);
  edge.stderr.on("data", keep);
  edge.on("exit", (code) => {
    log(`the edge exited (${code}); its last output:\n${edgeLog.join("")}`);
    stopAll(code ?? 1);
  });
  await waitForEdge(120_000);

  let tenant = previous.demo_tenant_id;
  let apiKey = previous.demo_api_key;
  if (!tenant || !apiKey || !(await fetch(`${edgeUrl}/v1/models`, { headers: { authorization: `Bearer ${apiKey}` } })).ok) {
    log("seeding the demo tenant and API key");
    tenant = (await api("POST", "/admin/v1/tenants", adminToken, { name: "demo" })).id;
    apiKey = (await api("POST", `/admin/v1/tenants/${tenant}/keys`, adminToken, { name: "demo" })).secret;
  }
  const dirs = await modelDirs();
  const models = await registerModels(dirs);
  const demoAddons = await registerDemoAddons(tenant, apiKey);
  if (demoAddons.length) log(`published demo add-ons: ${demoAddons.join(", ")}`);

  for (let i = 0; i < runnerCount; i++) {
    const { token, id } = await api("POST", "/admin/v1/runners", adminToken, { name: `local-runner-${i + 1}` });
    const runner = spawn(process.execPath, [join(root, "gpu-runner/src/runner/serve.ts"), "--workers", "1", "--models", dirs.join(":")], {
      cwd: root,
      stdio: ["ignore", "inherit", "pipe"],
      env: { ...process.env, EDGE_URL: edgeUrl, RUNNER_TOKEN: token },
    });
    children.push(runner);
    const tag = `[runner ${i + 1}] `;
    runner.stderr.on("data", (d) => process.stderr.write(String(d).replace(/^(?=.)/gm, tag)));
    runner.on("exit", (code) => log(`runner ${i + 1} (${id}) exited (${code})`));
  }

  const model = models.includes("tiny-shapes") ? "tiny-shapes" : models[0] ?? "tiny-shapes";
  const state = {
    edge_url: edgeUrl,
    dashboard_url: `${edgeUrl}/dashboard`,
    openapi_url: `${edgeUrl}/v1/openapi.json`,
    admin_token: adminToken,
    demo_tenant_id: tenant,
    demo_api_key: apiKey,
    models,
    default_model: model,
    runners: runnerCount,
  };
  writeFileSync(statePath, JSON.stringify(state, null, 2) + "\n", { mode: 0o600 });

  // One generation on the default model, so the first command shows the whole path working.
  let demo = "";
  if (runnerCount > 0 && models.length > 0 && process.env.SKIP_DEMO !== "1") {
    try {
      const g = await api("POST", "/v1/generations", apiKey, { model, prompt: "a large red circle on the left, blue background", seed: 1 }, { prefer: "wait=60" });
      demo = g.status === "succeeded" ? `  first image ${g.images[0].url}\n               (${g.request.sampler}, ${g.request.steps} steps, ${Math.round(g.timings.total_ms)} ms request to URL)` : `  first image ${g.status}: ${g.error?.message ?? "still running"}`;
    } catch (err) {
      demo = `  first image failed: ${err.message}`;
    }
  }
  const curl = `curl -s ${edgeUrl}/v1/generations -H "Authorization: Bearer ${apiKey}" -H "Content-Type: application/json" -H "Prefer: wait=30" -d '{"model":"${model}","prompt":"a large red circle on the left, blue background"}'`;
  process.stdout.write(
    [
      "",
      `imagegen is up (Ctrl-C stops it)`,
      `  edge        ${edgeUrl}`,
      `  dashboard   ${state.dashboard_url}  (sign in with the demo key)`,
      `  OpenAPI     ${state.openapi_url}`,
      `  demo key    ${apiKey}`,
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
