/** Users of the organisation: owners invite (a link shown once), change roles and remove people; admins read. */
import { api } from "../api.js";
import {
  card,
  confirmAction,
  dangerButton,
  copyButton,
  errorBox,
  field,
  fmtDate,
  h,
  showError,
  table,
  toast,
} from "../dom.js";

const ROLES = ["member", "admin", "owner"];

export async function render(view, ctx) {
  const owner = ctx.can("owner");
  const me = ctx.session.user.id;
  const usersBox = h("div", { id: "users" });
  const invitesBox = h("div", { id: "invites" });

  async function refresh() {
    const users = (await api("GET", "/users")).data;
    usersBox.replaceChildren(
      table(
        ["Name", "Email", "Role", "Joined", ""],
        users.map((u) =>
          h(
            "tr",
            { dataset: { email: u.email } },
            h("td", {}, u.name || "—", u.id === me ? " (you)" : ""),
            h("td", {}, u.email),
            h(
              "td",
              {},
              owner
                ? h(
                    "select",
                    {
                      "aria-label": `Role of ${u.email}`,
                      onchange: async (e) => {
                        try {
                          await api("PATCH", `/users/${u.id}`, { role: e.target.value });
                          toast(`${u.email} is now ${e.target.value}.`);
                        } catch (err) {
                          toast(err.message, "error");
                        }
                        refresh();
                      },
                    },
                    ROLES.map((r) => h("option", { value: r, selected: r === u.role }, r)),
                  )
                : u.role,
            ),
            h("td", {}, fmtDate(u.created_at)),
            h(
              "td",
              {},
              owner && u.id !== me
                ? dangerButton("Remove", {
                    title: `Remove ${u.email}?`,
                    text: "Their account and sessions are deleted; API keys stay with the organisation.",
                    confirmLabel: "Remove user",
                    action: () => api("DELETE", `/users/${u.id}`),
                    done: `${u.email} removed.`,
                    after: refresh,
                  })
                : null,
            ),
          ),
        ),
        "Users",
      ),
    );
    if (!owner) return;
    const invites = (await api("GET", "/invites")).data;
    invitesBox.replaceChildren(
      invites.length
        ? table(
            ["Email", "Role", "State", ""],
            invites.map((i) =>
              h(
                "tr",
                { dataset: { email: i.email } },
                h("td", {}, i.email),
                h("td", {}, i.role),
                h("td", { class: "state" }, inviteState(i)),
                h(
                  "td",
                  {},
                  !i.used_at &&
                    h(
                      "button",
                      {
                        type: "button",
                        class: "danger small",
                        onclick: async () => {
                          if (
                            !(await confirmAction(
                              `Withdraw the invite for ${i.email}?`,
                              "The link stops working.",
                              "Withdraw invite",
                            ))
                          )
                            return;
                          try {
                            await api("DELETE", `/invites/${i.id}`);
                          } catch (err) {
                            toast(err.message, "error");
                          }
                          refresh();
                        },
                      },
                      "Withdraw",
                    ),
                ),
              ),
            ),
            "Invites",
          )
        : h("p", { class: "muted" }, "No invites yet."),
    );
  }

  view.append(card("People", usersBox));
  if (owner) view.append(inviteCard(refresh), card("Invites", invitesBox));
  else view.append(h("p", { class: "muted" }, "Only owners invite people and change roles."));
  await refresh();
}

function inviteState(i) {
  if (i.used_at) return `accepted ${fmtDate(i.used_at)}`;
  if (Date.parse(i.expires_at) < Date.now()) return `expired ${fmtDate(i.expires_at)}`;
  return `pending, until ${fmtDate(i.expires_at)}`;
}

function inviteCard(onChange) {
  const email = h("input", { type: "email", name: "email", required: true, autocomplete: "off" });
  const role = h(
    "select",
    { name: "role" },
    ROLES.map((r) => h("option", { value: r }, r)),
  );
  const shown = h("div", { id: "invite-link", "aria-live": "polite" });
  const error = errorBox();
  const form = h(
    "form",
    {
      "aria-label": "Invite someone",
      onsubmit: async (e) => {
        e.preventDefault();
        showError(error, null);
        try {
          const inv = await api("POST", "/invites", { email: email.value.trim(), role: role.value });
          shown.replaceChildren(
            h(
              "div",
              { class: "notice" },
              h(
                "p",
                {},
                `Send this link to ${inv.email} (it works once, until ${fmtDate(inv.expires_at)}; it is not shown again):`,
              ),
              h("p", { class: "secret" }, h("code", { id: "invite-url" }, inv.url)),
              copyButton("Copy link", () => inv.url),
            ),
          );
          form.reset();
          onChange();
        } catch (err) {
          showError(error, err);
        }
      },
    },
    h("div", { class: "row" }, field("Email", email), field("Role", role)),
    h("div", { class: "actions" }, h("button", { type: "submit", id: "invite" }, "Create invite link")),
    error,
  );
  return card("Invite someone", form, shown);
}
