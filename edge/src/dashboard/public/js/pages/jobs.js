/**
 * Jobs: the tenant's generation history with thumbnails, refreshed live (server-sent events for the jobs still
 * queued or running, and a look for new jobs every few seconds); status, timings, the reproducibility record, re-run,
 * cancel with confirmation.
 */
import { api, followGeneration } from "../api.js";
import { badge, card, confirmAction, fmtDate, fmtMs, h, labelCells, table, toast } from "../dom.js";

const ACTIVE = new Set(["queued", "running"]);
const LIST_EVERY_MS = 4000;

/** The request that reproduces `g`: every resolved field, add-ons pinned to the versions it used. */
export function rerunBody(g) {
  const r = g.request;
  const b = {
    model: r.model,
    prompt: r.prompt,
    width: r.width,
    height: r.height,
    n: r.n,
    seed: r.seed,
    sampler: r.sampler,
    steps: r.steps,
    guidance: r.guidance,
    cache: r.cache,
  };
  if (r.negative_prompt) b.negative_prompt = r.negative_prompt;
  if (r.loras?.length)
    b.loras = r.loras.map((l) => ({ id: `${l.id}@${l.version}`, scale: l.scale, allow_partial: l.allow_partial }));
  if (r.controlnets?.length)
    b.controlnets = r.controlnets.map((c) => ({ id: `${c.id}@${c.version}`, image: c.image, scale: c.scale }));
  return b;
}

export async function render(view) {
  const streams = new Map();
  const rows = new Map();
  const tbody = h("tbody");
  const status = h(
    "select",
    { name: "status", "aria-label": "Show jobs with status" },
    h("option", { value: "" }, "all statuses"),
    ["queued", "running", "succeeded", "failed", "canceled"].map((s) => h("option", { value: s }, s)),
  );
  let timer = null;
  let open = location.hash.slice(1) || null;

  const HEADERS = ["Image", "Prompt", "Status", "Timings", "Created", ""];
  const wrap = table(HEADERS, [], "Generations");
  wrap.querySelector("tbody").replaceWith(tbody);

  function follow(g) {
    if (!ACTIVE.has(g.status) || streams.has(g.id)) return;
    streams.set(
      g.id,
      followGeneration(
        g.id,
        (u) => update(u),
        () => streams.delete(g.id),
      ),
    );
  }

  function update(g) {
    const next = labelCells(row(g), HEADERS);
    const old = rows.get(g.id);
    if (old) old.replaceWith(next);
    rows.set(g.id, next);
    return next;
  }

  async function refresh() {
    clearTimeout(timer);
    try {
      const q = status.value ? `&status=${status.value}` : "";
      const list = await api("GET", `/generations?limit=25${q}`);
      const fresh = list.data.map((g) => {
        // A row whose job is followed live keeps the stream's newer state.
        const kept = streams.has(g.id) && rows.get(g.id);
        return kept || update(g);
      });
      tbody.replaceChildren(...fresh);
      if (!list.data.length)
        tbody.append(h("tr", {}, h("td", { colspan: "6", class: "muted" }, "No generations yet: try the playground.")));
      for (const g of list.data) follow(g);
    } catch (err) {
      toast(err.message, "error");
    }
    timer = setTimeout(refresh, LIST_EVERY_MS);
  }

  function row(g) {
    const thumb = g.images.find((i) => i.url);
    const t = g.timings ?? {};
    const statusCell = h("td", { class: "status" }, badge(g.status));
    if (g.status === "running" && g.progress)
      statusCell.append(h("div", { class: "muted" }, `step ${g.progress.step} of ${g.progress.total}`));
    if (g.error) statusCell.append(h("div", { class: "error" }, `${g.error.message} (${g.error.code})`));
    const details = h(
      "details",
      { open: open === g.id, ontoggle: (e) => (open = e.target.open ? g.id : open === g.id ? null : open) },
      h("summary", {}, "Details"),
      h("h3", {}, "Timings"),
      h(
        "dl",
        { class: "facts" },
        Object.entries(t).flatMap(([k, v]) => [
          h("dt", {}, k.replace(/_ms$/, "").replace(/_/g, " ")),
          h("dd", {}, fmtMs(v)),
        ]),
      ),
      h("h3", {}, "Reproducibility record"),
      h("p", { class: "muted" }, "What produced the images: the model and add-on hashes, sampler, steps and seed."),
      h(
        "pre",
        { class: "snippet", tabindex: "0" },
        JSON.stringify(
          {
            request: {
              ...g.request,
              controlnets: g.request.controlnets.map((c) => ({ ...c, image: `${c.image.slice(0, 40)}…` })),
            },
            provenance: g.provenance,
          },
          null,
          2,
        ),
      ),
    );
    const actions = h("td", { class: "actions-cell" });
    actions.append(
      h(
        "button",
        {
          type: "button",
          class: "secondary small",
          onclick: async () => {
            try {
              const again = await api("POST", "/generations", rerunBody(g));
              toast(`Re-run queued as ${again.id}.`);
              refresh();
            } catch (err) {
              toast(err.message, "error");
            }
          },
        },
        "Re-run",
      ),
    );
    if (ACTIVE.has(g.status))
      actions.append(
        h(
          "button",
          {
            type: "button",
            class: "danger small",
            onclick: async () => {
              if (
                !(await confirmAction(
                  "Cancel this generation?",
                  `"${g.request.prompt}" stops; a runner already working on it stops at its next step.`,
                  "Cancel generation",
                ))
              )
                return;
              try {
                update(await api("POST", `/generations/${g.id}/cancel`));
              } catch (err) {
                toast(err.message, "error");
              }
            },
          },
          "Cancel",
        ),
      );
    return h(
      "tr",
      { id: g.id, dataset: { status: g.status } },
      h(
        "td",
        {},
        thumb
          ? h("img", {
              src: thumb.url,
              class: "thumb",
              width: "64",
              height: "64",
              alt: `Image for "${g.request.prompt}"`,
            })
          : h("span", { class: "thumb placeholder", "aria-hidden": "true" }),
      ),
      h(
        "td",
        { class: "prompt" },
        g.request.prompt,
        h(
          "div",
          { class: "muted" },
          `${g.request.model} · ${g.request.sampler} · ${g.request.steps} steps · seed ${g.request.seed}`,
        ),
        details,
      ),
      statusCell,
      h(
        "td",
        { class: "timings" },
        t.total_ms !== undefined
          ? [`total ${fmtMs(t.total_ms)}`, h("div", { class: "muted" }, `queue ${fmtMs(t.queue_ms)}`)]
          : "—",
      ),
      h("td", {}, fmtDate(g.created_at)),
      actions,
    );
  }

  status.onchange = refresh;
  view.append(
    card(
      null,
      h(
        "div",
        { class: "row" },
        h(
          "div",
          { class: "field" },
          h("label", { for: "job-status" }, "Status"),
          Object.assign(status, { id: "job-status" }),
        ),
      ),
      wrap,
    ),
  );
  await refresh();
  // A link to one job (/dashboard/jobs#gen_…) opens its details and shows it.
  if (open) document.getElementById(open)?.scrollIntoView({ block: "start" });
  return () => {
    clearTimeout(timer);
    for (const close of streams.values()) close();
  };
}
