/** The dashboard's HTTP side: the shell for every page, its files from the Worker's assets, the security headers. */
import { env, exports } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { contentSecurityPolicy } from "../src/dashboard/routes.ts";

const worker = (exports as unknown as { default: Fetcher }).default;
const get = (path: string) => worker.fetch(new Request(`http://edge.test${path}`));

describe("dashboard", () => {
  it("answers every page with the one shell and a strict CSP", async () => {
    for (const path of ["/dashboard", "/dashboard/", "/dashboard/jobs", "/dashboard/signup?invite=x"]) {
      const res = await get(path);
      expect(res.status, path).toBe(200);
      expect(res.headers.get("content-type")).toMatch(/^text\/html/);
      expect(res.headers.get("content-security-policy")).toBe(contentSecurityPolicy(env.S3_ENDPOINT));
      expect(res.headers.get("x-frame-options")).toBe("DENY");
      expect(await res.text()).toContain('<script type="module" src="/dashboard/assets/js/main.js"></script>');
    }
  });

  it("serves its modules and stylesheet typed, and nothing outside its folder", async () => {
    const js = await get("/dashboard/assets/js/main.js");
    expect(js.status).toBe(200);
    expect(js.headers.get("content-type")).toMatch(/^text\/javascript/);
    expect(js.headers.get("x-content-type-options")).toBe("nosniff");
    expect(await js.text()).toContain("export const ctx");
    expect((await get("/dashboard/assets/app.css")).headers.get("content-type")).toMatch(/^text\/css/);
    for (const path of ["/dashboard/assets/nope.js", "/dashboard/assets/..%2F..%2Fwrangler.toml", "/index.html"])
      expect((await get(path)).status, path).toBe(404);
  });

  it("allows no inline script or style and no other origin but the object store's", () => {
    const csp = contentSecurityPolicy("https://acct.r2.cloudflarestorage.com/bucket");
    expect(csp).toContain("script-src 'self';");
    expect(csp).toContain("style-src 'self';");
    expect(csp).toContain("connect-src 'self' https://acct.r2.cloudflarestorage.com;");
    expect(csp).toContain("img-src 'self' data: blob: https://acct.r2.cloudflarestorage.com;");
    expect(csp).not.toMatch(/unsafe|\*/);
    expect(contentSecurityPolicy(undefined)).toContain("connect-src 'self';");
    expect(contentSecurityPolicy("not a url")).toContain("connect-src 'self';");
  });
});
