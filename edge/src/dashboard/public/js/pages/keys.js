/** API keys for programs: create (scoped, optional expiry; the secret shown once), list, revoke with confirmation. */
import { api } from "../api.js";
import { card, dangerButton, copyButton, errorBox, field, fmtDate, h, showError, table } from "../dom.js";

const SCOPES = ["generations:write", "generations:read", "addons:write", "addons:read", "keys:write"];

export async function render(view) {
  const listBox = h("div");
  const name = h("input", { type: "text", name: "name", required: true, maxlength: "128", value: "" });
  const days = h("input", { type: "number", name: "expires_in_days", min: "1", max: "3650", placeholder: "never" });
  const scopeBoxes = SCOPES.map((s) =>
    h("input", {
      type: "checkbox",
      name: "scope",
      value: s,
      checked: s !== "keys:write",
      id: `scope-${s.replace(":", "-")}`,
    }),
  );
  const shown = h("div", { id: "new-key", "aria-live": "polite" });
  const error = errorBox();

  async function refresh() {
    const keys = (await api("GET", "/keys")).data;
    listBox.replaceChildren(
      keys.length
        ? table(
            ["Name", "Prefix", "Scopes", "Created", "Last used", "State", ""],
            keys.map((k) =>
              h(
                "tr",
                { dataset: { key: k.name } },
                h("td", {}, k.name),
                h("td", {}, h("code", {}, k.prefix)),
                h("td", { class: "scopes" }, k.scopes.join(", ")),
                h("td", {}, fmtDate(k.created_at)),
                h("td", {}, k.last_used_at ? fmtDate(k.last_used_at) : "never"),
                h(
                  "td",
                  { class: "state" },
                  k.revoked_at
                    ? "revoked"
                    : k.expires_at && Date.parse(k.expires_at) < Date.now()
                      ? "expired"
                      : k.expires_at
                        ? `until ${fmtDate(k.expires_at)}`
                        : "active",
                ),
                h(
                  "td",
                  {},
                  k.revoked_at
                    ? null
                    : dangerButton("Revoke", {
                        title: `Revoke ${k.name}?`,
                        text: "Programs using this key are refused from now on. This cannot be undone.",
                        confirmLabel: "Revoke key",
                        action: () => api("DELETE", `/keys/${k.id}`),
                        done: `${k.name} revoked.`,
                        after: refresh,
                      }),
                ),
              ),
            ),
            "API keys",
          )
        : h("p", { class: "muted" }, "No keys yet."),
    );
  }

  const form = h(
    "form",
    {
      "aria-label": "Create an API key",
      onsubmit: async (e) => {
        e.preventDefault();
        showError(error, null);
        const scopes = scopeBoxes.filter((b) => b.checked).map((b) => b.value);
        if (!scopes.length) return showError(error, { message: "Choose at least one scope." });
        try {
          const body = { name: name.value.trim(), scopes };
          if (days.value) body.expires_in_days = Number(days.value);
          const k = await api("POST", "/keys", body);
          const secret = h("code", { id: "new-key-secret" }, k.secret);
          shown.replaceChildren(
            h(
              "div",
              { class: "notice" },
              h("p", {}, h("strong", {}, `${k.name}: `), "copy this secret now; it is not shown again."),
              h("p", { class: "secret" }, secret),
              copyButton("Copy key", () => k.secret),
            ),
          );
          form.reset();
          refresh();
        } catch (err) {
          showError(error, err);
        }
      },
    },
    h("div", { class: "row" }, field("Name", name), field("Expires after (days)", days)),
    h(
      "fieldset",
      {},
      h("legend", {}, "Scopes"),
      scopeBoxes.map((b) => h("label", { class: "check", for: b.id }, b, ` ${b.value}`)),
    ),
    h("div", { class: "actions" }, h("button", { type: "submit", id: "create-key" }, "Create key")),
    error,
  );
  view.append(card("Create a key", form, shown), card("Keys", listBox));
  await refresh();
}
