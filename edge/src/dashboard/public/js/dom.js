/** Small DOM helpers: element building (text only, never HTML strings), toasts, the confirmation dialog. */

/**
 * h("button", { class: "danger", onclick }, "Delete") → an element. Attributes starting with "on" become
 * listeners; `hidden`, `disabled`, `checked`, `selected`, `required` are booleans; children are nodes, strings or
 * arrays; null/false children are skipped.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name === "value" && "value" in el) el.value = value;
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  append(el, children);
  return el;
}

/** el.replaceChildren, flattening arrays and skipping null/false as h() does. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

let uid = 0;
/** A unique id for label/for and aria-describedby pairs. */
export const nextId = (prefix) => `${prefix}-${++uid}`;

/** A labelled form field: the label's `for` names the control. */
export function field(label, control, hint) {
  const id = control.id || nextId("f");
  control.id = id;
  const hintEl = hint ? h("small", { class: "hint", id: `${id}-hint` }, hint) : null;
  if (hintEl) control.setAttribute("aria-describedby", hintEl.id);
  return h("div", { class: "field" }, h("label", { for: id }, label), control, hintEl);
}

export function toast(message, kind = "info") {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.dataset.kind = kind;
  el.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => el.classList.remove("show"), 4000);
}

/** Asks in a modal <dialog>; resolves true when confirmed. Escape or Cancel answers false. */
export function confirmAction(title, text, confirmLabel = "Confirm") {
  const dialog = document.getElementById("confirm");
  dialog.querySelector("#confirm-title").textContent = title;
  dialog.querySelector("#confirm-text").textContent = text;
  dialog.querySelector("#confirm-ok").textContent = confirmLabel;
  dialog.returnValue = "cancel";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
    dialog.querySelector("button[value=cancel]").focus();
  });
}

/** An error paragraph that screen readers announce. */
/**
 * A button for an action that destroys something: it asks first (`confirmAction`), runs `action`, reports `done` or
 * the error as a toast, then calls `after` (usually the page's refresh) either way.
 */
export function dangerButton(label, { title, text, confirmLabel, action, done, after }) {
  const onclick = async () => {
    if (!(await confirmAction(title, text, confirmLabel))) return;
    try {
      await action();
      toast(done);
    } catch (err) {
      toast(err.message, "error");
    }
    after?.();
  };
  return h("button", { type: "button", class: "danger small", onclick }, label);
}

export const errorBox = () => h("p", { class: "error", role: "alert" });

export function showError(box, err) {
  box.textContent = err ? `${err.message}${err.code ? ` (${err.code})` : ""}` : "";
}

/** A button that copies `text()` to the clipboard and says so. */
export function copyButton(label, text) {
  return h(
    "button",
    {
      type: "button",
      class: "secondary small",
      onclick: async (e) => {
        const button = e.currentTarget;
        try {
          await navigator.clipboard.writeText(text());
          button.textContent = "Copied";
        } catch {
          button.textContent = "Select and copy";
        }
        setTimeout(() => (button.textContent = label), 2000);
      },
    },
    label,
  );
}

export const fmtDate = (iso) => (iso ? new Date(iso).toLocaleString() : "—");
export const fmtMs = (ms) =>
  typeof ms === "number" ? (ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`) : "—";
export function fmtBytes(n) {
  if (n === null || n === undefined) return "—";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

/** A status badge: colour plus the word (never colour alone). */
export const badge = (status) => h("span", { class: `badge badge-${status}` }, status);

/** A section with a heading. */
export const card = (title, ...children) =>
  h("section", { class: "card" }, title ? h("h2", {}, title) : null, ...children);

/** Names each cell after its column (data-label), which narrow screens show above the value (app.css). */
export function labelCells(tr, headers) {
  [...tr.children].forEach((td, i) => {
    if (headers[i]) td.dataset.label = headers[i];
  });
  return tr;
}

/** A table that becomes a list of cards on narrow screens instead of widening the page. */
export function table(headers, rows, caption) {
  for (const tr of rows) labelCells(tr, headers);
  return h(
    "div",
    { class: "table-wrap", tabindex: "0", role: "region", "aria-label": caption ?? headers.join(", ") },
    h(
      "table",
      {},
      caption ? h("caption", { class: "sr-only" }, caption) : null,
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          headers.map((t) => h("th", { scope: "col" }, t)),
        ),
      ),
      h("tbody", {}, rows),
    ),
  );
}
