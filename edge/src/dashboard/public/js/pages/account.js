/** The signed-in user: password change, sign out, sign out everywhere. */
import { api } from "../api.js";
import { card, confirmAction, errorBox, field, h, showError, toast } from "../dom.js";

export function render(view, ctx) {
  const { user, tenant } = ctx.session;
  const current = h("input", { type: "password", autocomplete: "current-password", required: true });
  const next = h("input", {
    type: "password",
    autocomplete: "new-password",
    required: true,
    minlength: "10",
    maxlength: "200",
  });
  const error = errorBox();
  const signOut = async (all) => {
    if (
      all &&
      !(await confirmAction(
        "Sign out everywhere?",
        "Every session of yours ends, on every device, this one included.",
        "Sign out everywhere",
      ))
    )
      return;
    try {
      await api("POST", all ? "/auth/signout-all" : "/auth/signout");
    } catch (err) {
      return toast(err.message, "error");
    }
    await ctx.refreshSession();
    await ctx.navigate("/dashboard/signin");
  };
  view.append(
    card(
      "You",
      h(
        "dl",
        { class: "facts" },
        h("dt", {}, "Name"),
        h("dd", {}, user.name || "—"),
        h("dt", {}, "Email"),
        h("dd", {}, user.email),
        h("dt", {}, "Role"),
        h("dd", {}, user.role),
        h("dt", {}, "Organisation"),
        h("dd", {}, tenant.name),
      ),
      h(
        "div",
        { class: "actions" },
        h("button", { type: "button", id: "signout", onclick: () => signOut(false) }, "Sign out"),
        h(
          "button",
          { type: "button", id: "signout-all", class: "danger", onclick: () => signOut(true) },
          "Sign out everywhere",
        ),
      ),
    ),
    card(
      "Change password",
      h(
        "form",
        {
          "aria-label": "Change password",
          onsubmit: async (e) => {
            e.preventDefault();
            showError(error, null);
            try {
              await api("POST", "/auth/password", { current_password: current.value, new_password: next.value });
              e.target.reset();
              toast("Password changed; your other sessions were signed out.");
            } catch (err) {
              showError(error, err);
            }
          },
        },
        field("Current password", current),
        field("New password", next, "10 to 200 characters."),
        h("div", { class: "actions" }, h("button", { type: "submit" }, "Change password")),
        error,
      ),
    ),
  );
}
