/**
 * The dashboard's shell: finds the session, then routes /dashboard/<page> to the page module that renders it.
 * Links inside the dashboard navigate without a reload (History API); each page may return a cleanup function
 * (closing its event streams and timers) that runs before the next page renders.
 */
import { api, ApiError, setCsrfToken } from "./api.js";
import { h } from "./dom.js";

const PAGES = {
  signin: { title: "Sign in", public: true },
  signup: { title: "Sign up", public: true },
  playground: { title: "Playground" },
  jobs: { title: "Jobs" },
  addons: { title: "Add-ons" },
  models: { title: "Models" },
  usage: { title: "Usage" },
  keys: { title: "API keys", role: "admin" },
  webhooks: { title: "Webhooks", role: "admin" },
  users: { title: "Users", role: "admin" },
  account: { title: "Account" },
};
const RANK = { member: 0, admin: 1, owner: 2 };

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
let cleanup = null;

/** What every page gets: the session, and helpers to navigate and to check a role. */
export const ctx = {
  session: null,
  can(role) {
    return Boolean(this.session?.user) && RANK[this.session.user.role] >= RANK[role];
  },
  navigate(path, replace = false) {
    if (replace) history.replaceState(null, "", path);
    else history.pushState(null, "", path);
    return route();
  },
  async refreshSession() {
    try {
      const s = await api("GET", "/auth/session");
      this.session = s?.user ? s : null;
      setCsrfToken(s?.csrf_token ?? null);
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 401) throw err;
      this.session = null;
      setCsrfToken(null);
    }
    renderChrome();
    return this.session;
  },
  setSession(s) {
    this.session = s;
    setCsrfToken(s.csrf_token);
    renderChrome();
  },
};

function renderChrome() {
  const s = ctx.session;
  nav.hidden = !s;
  for (const li of nav.querySelectorAll("li[data-role]")) li.hidden = !ctx.can(li.dataset.role);
  who.replaceChildren(
    ...(s
      ? [
          h("span", {}, `${s.user.name || s.user.email} · ${s.tenant.name} · `),
          h("span", { class: "role" }, s.user.role),
        ]
      : []),
  );
}

function pageName() {
  const rest = location.pathname.replace(/^\/dashboard\/?/, "").split("/")[0];
  return rest || "playground";
}

let navigated = false;

async function route() {
  cleanup?.();
  cleanup = null;
  let name = pageName();
  let page = PAGES[name];
  if (!page) {
    main.replaceChildren(
      h("h1", {}, "Not found"),
      h("p", {}, "There is no such page. "),
      h("a", { href: "/dashboard" }, "Go to the playground"),
    );
    return;
  }
  if (!page.public && !ctx.session) {
    const next = location.pathname + location.search;
    history.replaceState(null, "", `/dashboard/signin?next=${encodeURIComponent(next)}`);
    name = "signin";
    page = PAGES.signin;
  }
  for (const a of nav.querySelectorAll("a")) {
    if (a.getAttribute("href") === `/dashboard/${name}`) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.title = `${page.title} · imagegen`;
  if (page.role && !ctx.can(page.role)) {
    main.replaceChildren(
      h("h1", {}, page.title),
      h(
        "p",
        { class: "notice" },
        `Only ${page.role}s and owners can manage ${page.title.toLowerCase()}; ask one of them.`,
      ),
    );
    return;
  }
  const mod = await import(`./pages/${name}.js`);
  const view = h("div", { class: "page", dataset: { page: name } });
  main.replaceChildren(h("h1", {}, page.title), view);
  try {
    cleanup = (await mod.render(view, ctx)) ?? null;
  } catch (err) {
    view.append(h("p", { class: "error", role: "alert" }, `This page failed to load: ${err.message}`));
  }
  // After an in-page navigation, move focus to the new content (as a page load would); not on the first load.
  if (navigated) main.focus({ preventScroll: true });
  navigated = true;
}

document.addEventListener("click", (e) => {
  const a = e.target.closest?.("a[href^='/dashboard']");
  if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || a.target) return;
  e.preventDefault();
  if (a.getAttribute("href") !== location.pathname + location.search) ctx.navigate(a.getAttribute("href"));
});
window.addEventListener("popstate", () => route());
window.addEventListener("session-ended", async () => {
  if (!ctx.session) return;
  ctx.session = null;
  setCsrfToken(null);
  renderChrome();
  const next = location.pathname + location.search;
  await ctx.navigate(`/dashboard/signin?next=${encodeURIComponent(next)}`, true);
});

await ctx.refreshSession().catch(() => null);
await route();
