/** Sign up through an invite link (/dashboard/signup?invite=…): the invite names the organisation, email and role. */
import { api } from "../api.js";
import { errorBox, field, h, showError } from "../dom.js";

export function render(view, ctx) {
  const invite = new URLSearchParams(location.search).get("invite") ?? "";
  const token = h("input", { type: "text", name: "invite", required: true, value: invite, autocomplete: "off" });
  const name = h("input", { type: "text", name: "name", autocomplete: "name", required: true, maxlength: "128" });
  const password = h("input", {
    type: "password",
    name: "password",
    autocomplete: "new-password",
    required: true,
    minlength: "10",
    maxlength: "200",
  });
  const error = errorBox();
  const submit = h("button", { type: "submit" }, "Create account");
  view.append(
    h(
      "form",
      {
        class: "narrow card",
        "aria-label": "Sign up",
        onsubmit: async (e) => {
          e.preventDefault();
          showError(error, null);
          submit.disabled = true;
          try {
            const s = await api("POST", "/auth/signup", {
              invite_token: token.value.trim(),
              name: name.value.trim(),
              password: password.value,
            });
            ctx.setSession(s);
            await ctx.navigate("/dashboard/playground");
          } catch (err) {
            showError(error, err);
          } finally {
            submit.disabled = false;
          }
        },
      },
      invite
        ? h("p", {}, "You were invited to an organisation on imagegen. Choose your name and a password.")
        : field("Invite code", token),
      field("Your name", name),
      field("Password", password, "10 to 200 characters."),
      h("div", { class: "actions" }, submit),
      error,
      h("p", { class: "muted" }, "Already have an account? ", h("a", { href: "/dashboard/signin" }, "Sign in")),
    ),
  );
  (invite ? name : token).focus();
  if (ctx.session)
    view.prepend(
      h("p", { class: "notice" }, `You are signed in as ${ctx.session.user.email}; signing up replaces that session.`),
    );
}
