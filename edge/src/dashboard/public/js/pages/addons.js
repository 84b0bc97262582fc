/**
 * Add-ons: upload a LoRA (.safetensors) or ControlNet (.tar of its bundle) straight to storage through the presigned
 * PUT with a real progress bar, watch validation (pending → validating → ready / rejected with the reason), versions,
 * visibility, delete; filter by kind and model family; which versions runners hold warm.
 */
import { api, putWithProgress, sha256Hex } from "../api.js";
import { loadAddons, loadModels, loadWarm } from "../catalog.js";
import { badge, card, dangerButton, errorBox, field, fmtBytes, fmtDate, h, showError, table, toast } from "../dom.js";

const SETTLED = new Set(["ready", "rejected"]);

export async function render(view, ctx) {
  const admin = ctx.can("admin");
  const models = await loadModels();
  const families = [...new Set(models.map((m) => m.family))];
  let addons = [];
  let warm = new Map();
  let timer = null;

  const kindFilter = h(
    "select",
    { name: "kind" },
    h("option", { value: "" }, "all kinds"),
    h("option", { value: "lora" }, "LoRA"),
    h("option", { value: "controlnet" }, "ControlNet"),
  );
  const familyFilter = h(
    "select",
    { name: "family" },
    h("option", { value: "" }, "all families"),
    families.map((f) => h("option", { value: f }, f)),
  );
  const listBox = h("div", { id: "addon-list" });
  kindFilter.onchange = familyFilter.onchange = () => draw();

  async function refresh() {
    [addons, warm] = await Promise.all([loadAddons(), loadWarm()]);
    draw();
    clearTimeout(timer);
    // Validation is live: while any version is pending or validating, look again shortly.
    if (addons.some((a) => a.versions.some((v) => !SETTLED.has(v.status)))) timer = setTimeout(refresh, 1500);
  }

  function draw() {
    const shown = addons.filter(
      (a) =>
        (!kindFilter.value || a.kind === kindFilter.value) && (!familyFilter.value || a.family === familyFilter.value),
    );
    listBox.replaceChildren(
      shown.length
        ? table(["Name", "Kind", "Family", "Latest version", "Visibility", "Warm on", ""], shown.map(row), "Add-ons")
        : h("p", { class: "muted" }, addons.length ? "No add-on matches the filter." : "No add-ons yet."),
    );
  }

  function row(a) {
    const latest = a.versions[0];
    // Runners name a warm add-on by id@version (or by id alone); a runner holding two versions counts twice.
    const warmRunners = a.versions.reduce((n, v) => n + (warm.get(`${a.id}@${v.version}`) ?? 0), warm.get(a.id) ?? 0);
    const visibility = h(
      "select",
      {
        "aria-label": `Visibility of ${a.name}`,
        onchange: async (e) => {
          try {
            await api("PATCH", `/addons/${a.id}`, { visibility: e.target.value });
            toast(`${a.name} is now ${e.target.value}.`);
          } catch (err) {
            toast(err.message, "error");
          }
          refresh();
        },
      },
      ["private", "tenant", "public"].map((v) => h("option", { value: v, selected: v === a.visibility }, v)),
    );
    const versions = h(
      "details",
      {},
      h("summary", {}, `${a.versions.length} version${a.versions.length === 1 ? "" : "s"}`),
      h(
        "ul",
        { class: "plain" },
        a.versions.map((v) =>
          h(
            "li",
            {},
            `v${v.version} `,
            badge(v.status),
            ` ${fmtBytes(v.size_bytes)} · ${fmtDate(v.created_at)}`,
            v.rejection_reason ? h("div", { class: "error" }, v.rejection_reason) : null,
            v.details?.rank ? h("div", { class: "muted" }, `rank ${v.details.rank}`) : null,
          ),
        ),
      ),
    );
    return h(
      "tr",
      { dataset: { addon: a.name } },
      h("td", {}, h("strong", {}, a.name), a.owned ? null : h("div", { class: "muted" }, "shared with you")),
      h("td", {}, a.kind === "lora" ? "LoRA" : "ControlNet"),
      h("td", {}, a.family),
      h(
        "td",
        { class: "version-state" },
        latest ? [`v${latest.version} `, badge(latest.status)] : "—",
        latest?.rejection_reason ? h("div", { class: "error" }, latest.rejection_reason) : null,
        versions,
      ),
      h("td", {}, admin && a.owned ? visibility : a.visibility),
      h("td", { class: "warm" }, warmRunners ? `${warmRunners} runner${warmRunners === 1 ? "" : "s"}` : "—"),
      h(
        "td",
        {},
        admin && a.owned
          ? dangerButton("Delete", {
              title: `Delete ${a.name}?`,
              text: "Every version is deleted; requests that name it will fail.",
              confirmLabel: "Delete add-on",
              action: () => api("DELETE", `/addons/${a.id}`),
              done: `${a.name} deleted.`,
              after: refresh,
            })
          : null,
      ),
    );
  }

  view.append(
    card("Filter", h("div", { class: "row" }, field("Kind", kindFilter), field("Model family", familyFilter))),
    card("Your add-ons", listBox),
  );
  if (admin) view.prepend(uploadCard(families, refresh));
  await refresh();
  return () => clearTimeout(timer);
}

function uploadCard(families, onChange) {
  const file = h("input", { type: "file", name: "file", accept: ".safetensors,.tar", required: true });
  const name = h("input", {
    type: "text",
    name: "name",
    required: true,
    pattern: "[A-Za-z0-9._\\-]+",
    maxlength: "128",
  });
  const family = h(
    "select",
    { name: "family" },
    families.map((f) => h("option", { value: f }, f)),
  );
  const visibility = h(
    "select",
    { name: "visibility" },
    ["private", "tenant", "public"].map((v) => h("option", { value: v }, v)),
  );
  const progress = h("progress", { id: "upload-progress", max: "100", value: "0", hidden: true });
  const status = h("p", { id: "upload-status", class: "muted", "aria-live": "polite" });
  const error = errorBox();
  const submit = h("button", { type: "submit" }, "Upload");
  file.onchange = () => {
    const f = file.files[0];
    if (f && !name.value) name.value = f.name.replace(/\.(safetensors|tar)$/i, "").replace(/[^A-Za-z0-9._-]/g, "-");
  };
  const form = h(
    "form",
    {
      "aria-label": "Upload an add-on",
      onsubmit: async (e) => {
        e.preventDefault();
        showError(error, null);
        const f = file.files[0];
        const kind = f.name.toLowerCase().endsWith(".tar") ? "controlnet" : "lora";
        submit.disabled = true;
        try {
          status.textContent = "Hashing…";
          const sha256 = await sha256Hex(f);
          const up = await api("POST", "/addons", {
            kind,
            name: name.value.trim(),
            family: family.value,
            visibility: visibility.value,
            size_bytes: f.size,
            sha256,
          });
          progress.hidden = false;
          progress.value = 0;
          await putWithProgress(up.upload, f, (loaded, total) => {
            const pct = total ? Math.round((loaded / total) * 100) : 0;
            progress.value = pct;
            progress.textContent = `${pct}%`;
            status.textContent = `Uploading: ${fmtBytes(loaded)} of ${fmtBytes(total)} (${pct}%)`;
          });
          progress.value = 100;
          status.textContent = `Uploaded; validating ${up.addon.name} v${up.version.version}…`;
          onChange();
          const v = await api("POST", `/addons/${up.addon.id}/versions/${up.version.version}/finalize`);
          status.textContent = `${up.addon.name} v${v.version}: ${v.status}`;
          if (v.status === "rejected") showError(error, { message: `Rejected: ${v.rejection_reason}` });
          else form.reset();
        } catch (err) {
          status.textContent = "";
          showError(error, err);
        } finally {
          submit.disabled = false;
          onChange();
        }
      },
    },
    h(
      "p",
      { class: "muted" },
      "A LoRA is a .safetensors file (kohya or PEFT keys); a ControlNet is a .tar of its bundle folder.",
    ),
    h(
      "div",
      { class: "row" },
      field("File", file),
      field("Name", name, "Letters, digits, . _ -; an existing name adds a version."),
    ),
    h("div", { class: "row" }, field("Model family", family), field("Visibility", visibility)),
    h("div", { class: "actions" }, submit),
    h("label", { for: "upload-progress", class: "sr-only" }, "Upload progress"),
    progress,
    status,
    error,
  );
  return card("Upload an add-on", form);
}
