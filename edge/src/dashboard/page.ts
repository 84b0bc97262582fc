/**
 * The dashboard: one static page that talks to the public API with the tenant's own API key (kept in the
 * browser's session storage, sent as a Bearer token like any client). It generates, lists and cancels jobs,
 * uploads and publishes add-ons, and creates and revokes keys. No server-side session: the API is the only door.
 */
export const DASHBOARD_HTML = /* html */ `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>imagegen dashboard</title>
<style>
  :root { font-family: system-ui, sans-serif; color: #1d2330; background: #f6f7f9; }
  body { margin: 0; }
  header { background: #1d2330; color: #fff; padding: 12px 20px; display: flex; gap: 16px; align-items: center; }
  header h1 { font-size: 18px; margin: 0; flex: 1; }
  main { padding: 16px 20px; display: grid; gap: 16px; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); }
  section { background: #fff; border: 1px solid #dde1e7; border-radius: 8px; padding: 14px; }
  section h2 { font-size: 15px; margin: 0 0 10px; }
  label { display: block; font-size: 12px; color: #566; margin-top: 6px; }
  input, select, button, textarea { font: inherit; padding: 5px 8px; }
  input[type=text], input[type=password], textarea, select { width: 100%; box-sizing: border-box; }
  .row { display: flex; gap: 8px; } .row > * { flex: 1; }
  table { width: 100%; border-collapse: collapse; font-size: 13px; } td, th { padding: 4px; border-bottom: 1px solid #eee; text-align: left; }
  img.thumb { width: 64px; height: 64px; image-rendering: pixelated; border: 1px solid #ccc; }
  img.result { width: 192px; height: 192px; image-rendering: pixelated; border: 1px solid #ccc; }
  .status-succeeded { color: #1a7f37; } .status-failed, .status-canceled { color: #b42318; } .status-running, .status-queued { color: #9a6700; }
  .error { color: #b42318; white-space: pre-wrap; } .muted { color: #667; font-size: 12px; } code { background: #eef; padding: 1px 4px; }
  #login { max-width: 480px; margin: 60px auto; }
</style>
</head>
<body>
<header><h1>imagegen</h1><span id="who" class="muted"></span><button id="logout" hidden>Sign out</button></header>
<section id="login">
  <h2>Sign in with an API key</h2>
  <input id="key" type="password" placeholder="igk_…" autocomplete="off">
  <p><button id="signin">Sign in</button></p>
  <p id="login-error" class="error"></p>
</section>
<main id="app" hidden>
  <section>
    <h2>Generate</h2>
    <label>Prompt<textarea id="prompt" rows="2">a large red circle on the left, blue background</textarea></label>
    <div class="row">
      <label>Model<select id="model"></select></label>
      <label>Sampler<select id="sampler"><option value="">model default</option><option>ddim</option><option>lcm</option><option>rectified-flow</option></select></label>
    </div>
    <div class="row">
      <label>Steps<input id="steps" type="text" placeholder="default"></label>
      <label>Seed<input id="seed" type="text" placeholder="random"></label>
      <label>Images<input id="n" type="text" value="1"></label>
    </div>
    <label>LoRA<select id="lora"><option value="">none</option></select></label>
    <p><button id="generate">Generate</button> <span id="gen-status" class="muted"></span></p>
    <div id="gen-images"></div>
    <p id="gen-error" class="error"></p>
  </section>
  <section>
    <h2>Jobs</h2>
    <table><thead><tr><th>image</th><th>prompt</th><th>status</th><th>timings</th><th></th></tr></thead><tbody id="jobs"></tbody></table>
    <p><button id="refresh-jobs">Refresh</button></p>
  </section>
  <section>
    <h2>Add-ons</h2>
    <table><thead><tr><th>name</th><th>kind</th><th>visibility</th><th>version</th><th></th></tr></thead><tbody id="addons"></tbody></table>
    <h2 style="margin-top:14px">Upload a LoRA (.safetensors) or a ControlNet (.tar of its bundle folder)</h2>
    <div class="row"><input id="addon-name" type="text" placeholder="name"><input id="addon-file" type="file" accept=".safetensors,.tar"></div>
    <p><button id="upload">Upload</button> <span id="upload-status" class="muted"></span></p>
    <p id="upload-error" class="error"></p>
  </section>
  <section>
    <h2>API keys</h2>
    <table><thead><tr><th>name</th><th>prefix</th><th>last used</th><th>state</th><th></th></tr></thead><tbody id="keys"></tbody></table>
    <div class="row"><input id="key-name" type="text" placeholder="new key name"><button id="create-key">Create key</button></div>
    <p id="new-key" class="muted"></p>
  </section>
</main>
<script type="module">
const $ = (id) => document.getElementById(id);
let key = sessionStorage.getItem("imagegen.key") || "";

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: { authorization: "Bearer " + key, ...(body ? { "content-type": "application/json" } : {}), ...(method === "POST" && path === "/v1/generations" ? { prefer: "wait=30" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const json = res.status === 204 ? null : await res.json();
  if (!res.ok) throw new Error(json && json.error ? json.error.message + " (" + json.error.code + ")" : "HTTP " + res.status);
  return json;
}

function cell(tr, text, cls) { const td = document.createElement("td"); td.textContent = text ?? ""; if (cls) td.className = cls; tr.append(td); return td; }
function button(label, onclick) { const b = document.createElement("button"); b.textContent = label; b.onclick = onclick; return b; }
function img(url, cls) { const i = document.createElement("img"); i.src = url; i.className = cls; i.alt = "generated image"; return i; }

async function signIn() {
  try {
    const models = await api("GET", "/v1/models");
    $("login").hidden = true; $("app").hidden = false; $("logout").hidden = false;
    $("who").textContent = "key " + key.slice(0, 12) + "…";
    $("model").replaceChildren(...models.data.map((m) => new Option(m.display_name + " (" + m.id + ")", m.id)));
    await Promise.all([loadJobs(), loadAddons(), loadKeys()]);
  } catch (err) {
    sessionStorage.removeItem("imagegen.key");
    $("login").hidden = false; $("app").hidden = true;
    $("login-error").textContent = String(err.message);
  }
}

async function loadJobs() {
  const list = await api("GET", "/v1/generations?limit=20");
  $("jobs").replaceChildren(...list.data.map((g) => {
    const tr = document.createElement("tr");
    tr.dataset.id = g.id;
    const t = cell(tr, "");
    if (g.images[0] && g.images[0].url) t.append(img(g.images[0].url, "thumb"));
    cell(tr, g.request.prompt);
    cell(tr, g.status + (g.progress && g.status === "running" ? " " + g.progress.step + "/" + g.progress.total : "") + (g.error ? ": " + g.error.message : ""), "status-" + g.status);
    cell(tr, g.timings ? Math.round(g.timings.total_ms) + " ms" : "");
    const actions = cell(tr, "");
    if (g.status === "queued" || g.status === "running") actions.append(button("Cancel", async () => { await api("POST", "/v1/generations/" + g.id + "/cancel"); loadJobs(); }));
    return tr;
  }));
}

async function loadAddons() {
  const list = await api("GET", "/v1/addons");
  $("lora").replaceChildren(new Option("none", ""), ...list.data.filter((a) => a.kind === "lora").map((a) => new Option(a.name + (a.owned ? "" : " (public)"), a.id)));
  $("addons").replaceChildren(...list.data.map((a) => {
    const tr = document.createElement("tr");
    cell(tr, a.name); cell(tr, a.kind); cell(tr, a.visibility); cell(tr, "v" + a.latest_version);
    const actions = cell(tr, "");
    if (a.owned) {
      actions.append(button(a.visibility === "public" ? "Make private" : "Publish", async () => { await api("PATCH", "/v1/addons/" + a.id, { visibility: a.visibility === "public" ? "private" : "public" }); loadAddons(); }));
      actions.append(button("Delete", async () => { await api("DELETE", "/v1/addons/" + a.id); loadAddons(); }));
    }
    return tr;
  }));
}

async function loadKeys() {
  const list = await api("GET", "/v1/keys");
  $("keys").replaceChildren(...list.data.map((k) => {
    const tr = document.createElement("tr");
    tr.dataset.id = k.id;
    cell(tr, k.name); cell(tr, k.prefix); cell(tr, k.last_used_at ? new Date(k.last_used_at).toLocaleString() : "never");
    cell(tr, k.revoked_at ? "revoked" : "active");
    const actions = cell(tr, "");
    if (!k.revoked_at && !key.startsWith(k.prefix.replace("…", ""))) actions.append(button("Revoke", async () => { await api("DELETE", "/v1/keys/" + k.id); loadKeys(); }));
    return tr;
  }));
}

$("signin").onclick = () => { key = $("key").value.trim(); sessionStorage.setItem("imagegen.key", key); signIn(); };
$("logout").onclick = () => { sessionStorage.removeItem("imagegen.key"); location.reload(); };
$("refresh-jobs").onclick = loadJobs;

$("generate").onclick = async () => {
  $("gen-error").textContent = ""; $("gen-images").replaceChildren(); $("gen-status").textContent = "generating…";
  const body = { model: $("model").value, prompt: $("prompt").value };
  if ($("sampler").value) body.sampler = $("sampler").value;
  if ($("steps").value) body.steps = Number($("steps").value);
  if ($("seed").value) body.seed = Number($("seed").value);
  if ($("n").value) body.n = Number($("n").value);
  if ($("lora").value) body.loras = [{ id: $("lora").value, scale: 1 }];
  try {
    const g = await api("POST", "/v1/generations", body);
    $("gen-status").textContent = g.status + (g.timings ? " in " + Math.round(g.timings.total_ms) + " ms" : "") + " · seed " + g.request.seed;
    $("gen-images").replaceChildren(...g.images.map((i) => img(i.url, "result")));
    if (g.error) $("gen-error").textContent = g.error.message;
  } catch (err) { $("gen-status").textContent = ""; $("gen-error").textContent = err.message; }
  loadJobs();
};

$("upload").onclick = async () => {
  $("upload-error").textContent = "";
  const file = $("addon-file").files[0];
  const name = $("addon-name").value.trim() || (file && file.name.replace(/\\.(safetensors|tar)$/, ""));
  if (!file) { $("upload-error").textContent = "Choose a .safetensors (LoRA) or .tar (ControlNet) file."; return; }
  const kind = file.name.endsWith(".tar") ? "controlnet" : "lora";
  try {
    const bytes = new Uint8Array(await file.arrayBuffer());
    const digest = [...new Uint8Array(await crypto.subtle.digest("SHA-256", bytes))].map((b) => b.toString(16).padStart(2, "0")).join("");
    const model = (await api("GET", "/v1/models/" + $("model").value));
    $("upload-status").textContent = "uploading…";
    const up = await api("POST", "/v1/addons", { kind, name, family: model.family, size_bytes: bytes.byteLength, sha256: digest });
    const put = await fetch(up.upload.url, { method: "PUT", body: bytes, headers: up.upload.headers });
    if (!put.ok) throw new Error("storage refused the upload (" + put.status + ")");
    $("upload-status").textContent = "validating…";
    const v = await api("POST", "/v1/addons/" + up.addon.id + "/versions/" + up.version.version + "/finalize");
    $("upload-status").textContent = name + " v" + v.version + ": " + v.status;
    if (v.status === "rejected") $("upload-error").textContent = v.rejection_reason;
  } catch (err) { $("upload-status").textContent = ""; $("upload-error").textContent = err.message; }
  loadAddons();
};

$("create-key").onclick = async () => {
  try {
    const k = await api("POST", "/v1/keys", { name: $("key-name").value.trim() || "dashboard" });
    $("new-key").textContent = "";
    const code = document.createElement("code"); code.id = "new-key-secret"; code.textContent = k.secret;
    $("new-key").append("New key (shown once): ", code);
    loadKeys();
  } catch (err) { $("new-key").textContent = err.message; }
};

if (key) signIn();
</script>
</body>
</html>`;
