/** Webhook endpoints (signed Standard Webhooks deliveries): register, enable/disable, delete; the delivery log; redeliver. */
import { api } from "../api.js";
import {
  badge,
  card,
  confirmAction,
  copyButton,
  errorBox,
  field,
  fmtDate,
  h,
  replace,
  showError,
  table,
  toast,
} from "../dom.js";

const EVENTS = ["generation.succeeded", "generation.failed", "generation.canceled"];

export async function render(view) {
  const endpointsBox = h("div", { id: "endpoints" });
  const deliveriesBox = h("div", { id: "deliveries" });
  const url = h("input", {
    type: "url",
    name: "url",
    required: true,
    placeholder: "https://example.com/hooks/imagegen",
  });
  const eventBoxes = EVENTS.map((ev) =>
    h("input", { type: "checkbox", name: "event", value: ev, checked: true, id: `ev-${ev.replace(".", "-")}` }),
  );
  const shown = h("div", { "aria-live": "polite" });
  const error = errorBox();
  const filter = h(
    "select",
    { id: "delivery-endpoint", "aria-label": "Deliveries to" },
    h("option", { value: "" }, "all endpoints"),
  );
  let timer = null;

  async function refresh() {
    clearTimeout(timer);
    const endpoints = (await api("GET", "/webhooks/endpoints")).data;
    const chosen = filter.value;
    replace(
      filter,
      h("option", { value: "" }, "all endpoints"),
      endpoints.map((e) => h("option", { value: e.id, selected: e.id === chosen }, e.url)),
    );
    endpointsBox.replaceChildren(
      endpoints.length
        ? table(
            ["URL", "Events", "State", "Created", ""],
            endpoints.map((ep) =>
              h(
                "tr",
                { dataset: { url: ep.url } },
                h("td", { class: "url" }, ep.url),
                h("td", {}, ep.events.join(", ")),
                h("td", {}, ep.disabled ? "disabled" : "enabled"),
                h("td", {}, fmtDate(ep.created_at)),
                h(
                  "td",
                  { class: "actions-cell" },
                  h(
                    "button",
                    {
                      type: "button",
                      class: "secondary small",
                      onclick: () =>
                        act(() => api("PATCH", `/webhooks/endpoints/${ep.id}`, { disabled: !ep.disabled })),
                    },
                    ep.disabled ? "Enable" : "Disable",
                  ),
                  h(
                    "button",
                    {
                      type: "button",
                      class: "danger small",
                      onclick: async () => {
                        if (
                          await confirmAction(
                            "Delete this endpoint?",
                            `${ep.url} receives no more deliveries.`,
                            "Delete endpoint",
                          )
                        )
                          act(() => api("DELETE", `/webhooks/endpoints/${ep.id}`));
                      },
                    },
                    "Delete",
                  ),
                ),
              ),
            ),
            "Webhook endpoints",
          )
        : h("p", { class: "muted" }, "No endpoints yet."),
    );
    const q = filter.value ? `?endpoint_id=${encodeURIComponent(filter.value)}` : "";
    const deliveries = (await api("GET", `/webhooks/deliveries${q}`)).data;
    deliveriesBox.replaceChildren(
      deliveries.length
        ? table(
            ["Event", "Generation", "URL", "Status", "Attempts", "Last answer", "Created", ""],
            deliveries.map((d) =>
              h(
                "tr",
                { dataset: { delivery: d.id, status: d.status } },
                h("td", {}, d.event),
                h(
                  "td",
                  {},
                  d.generation_id ? h("a", { href: `/dashboard/jobs#${d.generation_id}` }, d.generation_id) : "—",
                ),
                h("td", { class: "url" }, d.url),
                h(
                  "td",
                  {},
                  badge(d.status),
                  d.next_attempt_at && d.status === "pending"
                    ? h("div", { class: "muted" }, `next ${fmtDate(d.next_attempt_at)}`)
                    : null,
                ),
                h("td", {}, String(d.attempts)),
                h(
                  "td",
                  {},
                  d.last_response_status ? `HTTP ${d.last_response_status}` : "—",
                  d.last_error ? h("div", { class: "error" }, d.last_error) : null,
                ),
                h("td", {}, fmtDate(d.created_at)),
                h(
                  "td",
                  {},
                  h(
                    "button",
                    {
                      type: "button",
                      class: "secondary small",
                      onclick: () =>
                        act(() => api("POST", `/webhooks/deliveries/${d.id}/redeliver`), "Redelivery queued."),
                    },
                    "Redeliver",
                  ),
                ),
              ),
            ),
            "Deliveries",
          )
        : h("p", { class: "muted" }, "No deliveries yet."),
    );
    timer = setTimeout(() => refresh().catch(() => {}), 3000);
  }

  async function act(call, done) {
    try {
      await call();
      if (done) toast(done);
    } catch (err) {
      toast(err.message, "error");
    }
    await refresh();
  }

  filter.onchange = () => refresh();
  const form = h(
    "form",
    {
      "aria-label": "Register a webhook endpoint",
      onsubmit: async (e) => {
        e.preventDefault();
        showError(error, null);
        const events = eventBoxes.filter((b) => b.checked).map((b) => b.value);
        if (!events.length) return showError(error, { message: "Choose at least one event." });
        try {
          const ep = await api("POST", "/webhooks/endpoints", { url: url.value.trim(), events });
          shown.replaceChildren(
            h(
              "div",
              { class: "notice" },
              h(
                "p",
                {},
                "Signing secret for ",
                h("code", {}, ep.url),
                " (verify deliveries with it; shown again only from the API):",
              ),
              h("p", { class: "secret" }, h("code", { id: "webhook-secret" }, ep.secret)),
              copyButton("Copy secret", () => ep.secret),
            ),
          );
          form.reset();
          await refresh();
        } catch (err) {
          showError(error, err);
        }
      },
    },
    field("Endpoint URL", url),
    h(
      "fieldset",
      {},
      h("legend", {}, "Events"),
      eventBoxes.map((b) => h("label", { class: "check", for: b.id }, b, ` ${b.value}`)),
    ),
    h("div", { class: "actions" }, h("button", { type: "submit", id: "add-endpoint" }, "Add endpoint")),
    error,
  );
  view.append(
    card("Register an endpoint", form, shown),
    card("Endpoints", endpointsBox),
    card(
      "Delivery log",
      h("div", { class: "row" }, h("div", { class: "field" }, h("label", { for: filter.id }, "Deliveries to"), filter)),
      deliveriesBox,
    ),
  );
  await refresh();
  return () => clearTimeout(timer);
}
