/**
 * The dashboard's HTTP side: one HTML shell for every page under /dashboard (the pages are ES modules that call the
 * public API with the session cookie), its static files from the Worker's assets (edge/src/dashboard/public, uPlot
 * copied in by vendor.mjs), and the security headers every answer carries: a strict Content-Security-Policy (no
 * inline script or style, nothing from another origin but the object store the browser uploads to and shows images
 * from), no framing, no sniffing, no referrer.
 */
import { Hono } from "hono";
import type { AppEnv } from "../context.ts";

/** The object store's origin: presigned PUTs (uploads) and GETs (images) go there straight from the browser. */
function storageOrigin(endpoint: string | undefined): string | undefined {
  if (!endpoint) return undefined;
  try {
    return new URL(endpoint).origin;
  } catch {
    return undefined;
  }
}

export function contentSecurityPolicy(s3Endpoint: string | undefined): string {
  const store = storageOrigin(s3Endpoint);
  const extra = store ? ` ${store}` : "";
  return [
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    `img-src 'self' data: blob:${extra}`,
    `connect-src 'self'${extra}`,
    "font-src 'self'",
    "manifest-src 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
  ].join("; ");
}

const CONTENT_TYPES: Record<string, string> = {
  js: "text/javascript; charset=utf-8",
  css: "text/css; charset=utf-8",
  html: "text/html; charset=utf-8",
  svg: "image/svg+xml",
  png: "image/png",
};

async function asset(c: { env: AppEnv["Bindings"]; req: { url: string } }, path: string): Promise<Response | null> {
  if (!c.env.ASSETS) return null;
  const res = await c.env.ASSETS.fetch(new URL(path, c.req.url));
  return res.ok ? res : null;
}

function secure(res: Response, csp: string, cache: string): Response {
  const out = new Response(res.body, res);
  out.headers.set("Content-Security-Policy", csp);
  out.headers.set("X-Content-Type-Options", "nosniff");
  out.headers.set("X-Frame-Options", "DENY");
  out.headers.set("Referrer-Policy", "no-referrer");
  out.headers.set("Cross-Origin-Opener-Policy", "same-origin");
  out.headers.set("Permissions-Policy", "camera=(), microphone=(), geolocation=()");
  out.headers.set("Cache-Control", cache);
  return out;
}

export const dashboard = new Hono<AppEnv>()
  .get("/assets/*", async (c) => {
    const rel = c.req.path.slice("/dashboard/assets/".length);
    if (!/^[A-Za-z0-9/_.-]+$/.test(rel) || rel.includes("..")) return c.notFound();
    const res = await asset(c, `/${rel}`);
    if (!res) return c.notFound();
    const type = CONTENT_TYPES[rel.split(".").pop() ?? ""];
    const typed = new Response(res.body, res);
    if (type) typed.headers.set("Content-Type", type);
    // Pages and assets change together on deploy; revalidate rather than risk a stale module graph.
    return secure(typed, contentSecurityPolicy(c.env.S3_ENDPOINT), "no-cache");
  })
  .get("/*", async (c) => {
    const res = await asset(c, "/index.html");
    if (!res)
      return c.text("The dashboard's files are missing: the Worker has no ASSETS binding (see wrangler.toml).", 500);
    const html = new Response(res.body, { status: 200, headers: { "Content-Type": CONTENT_TYPES.html! } });
    return secure(html, contentSecurityPolicy(c.env.S3_ENDPOINT), "no-store");
  });
