/** Sign in with email and password (a session cookie; the API answers the CSRF token the pages send back). */
import { api } from "../api.js";
import { errorBox, field, h, showError } from "../dom.js";

export function render(view, ctx) {
  if (ctx.session) return void ctx.navigate("/dashboard/playground", true);
  const email = h("input", { type: "email", name: "email", autocomplete: "username", required: true });
  const password = h("input", { type: "password", name: "password", autocomplete: "current-password", required: true });
  const error = errorBox();
  const submit = h("button", { type: "submit" }, "Sign in");
  const form = h(
    "form",
    {
      class: "narrow card",
      "aria-label": "Sign in",
      onsubmit: async (e) => {
        e.preventDefault();
        showError(error, null);
        submit.disabled = true;
        try {
          const s = await api("POST", "/auth/signin", { email: email.value.trim(), password: password.value });
          ctx.setSession(s);
          const next = new URLSearchParams(location.search).get("next");
          await ctx.navigate(
            next?.startsWith("/dashboard/") && !next.startsWith("/dashboard/sign") ? next : "/dashboard/playground",
          );
        } catch (err) {
          showError(error, err);
          password.select();
        } finally {
          submit.disabled = false;
        }
      },
    },
    field("Email", email),
    field("Password", password),
    h("div", { class: "actions" }, submit),
    error,
    h("p", { class: "muted" }, "No account? Ask an owner of your organisation for an invite link."),
  );
  view.append(form);
  email.focus();
}
