/**
 * The three OpenAPI 3.1 documents (public, admin, runner), cut from the one document the edge's routes describe.
 * Each keeps its own paths, the schemas they reach and its own credential, so a tenant's document never lists the
 * operator's or the runners' routes. The committed copies are in contracts/openapi/; `npm run openapi` rewrites them.
 */

export const OPENAPI_SURFACES = ["public", "admin", "runner"] as const;
export type OpenApiSurface = (typeof OPENAPI_SURFACES)[number];

interface Surface {
  prefix: string;
  title: string;
  description: string;
  credential: string;
  /** A session cookie that authenticates as well (the dashboard's), if the surface has one. */
  cookie?: { name: string; description: string };
}

const SURFACES: Record<OpenApiSurface, Surface> = {
  public: {
    prefix: "/v1/",
    title: "imagegen API",
    description: "Multi-tenant image generation with LoRA and ControlNet add-ons, few-step samplers and block caching.",
    credential: "An API key (igk_…)",
    cookie: {
      name: "ig_session",
      description: "The dashboard's session (POST /v1/auth/signin); state changes also need the X-CSRF-Token header",
    },
  },
  admin: {
    prefix: "/admin/v1/",
    title: "imagegen operator API",
    description: "Tenants, their keys and limits, runners, models and add-ons registered from storage.",
    credential: "The deployment's admin token",
  },
  runner: {
    prefix: "/internal/v1/",
    title: "imagegen runner API",
    description: "Lease, heartbeat, complete and fail: how GPU runners take jobs from the edge.",
    credential: "A runner token (igr_…), never a tenant key",
  },
};

export const OPENAPI_VERSION = "0.1.0";

/** What the document generator needs before any route is added (the same for every surface). */
export const OPENAPI_BASE = { openapi: "3.1.0", info: { title: "imagegen", version: OPENAPI_VERSION } } as const;

export interface OpenApiDocument {
  openapi: string;
  info: { title: string; version: string; description?: string };
  paths?: Record<string, unknown>;
  components?: Record<string, Record<string, unknown> | undefined>;
  [key: string]: unknown;
}

/** Every `#/components/<kind>/<name>` a value refers to. */
function refsIn(value: unknown, out: Set<string>): void {
  if (Array.isArray(value)) for (const v of value) refsIn(v, out);
  else if (value && typeof value === "object") {
    for (const [k, v] of Object.entries(value)) {
      if (k === "$ref" && typeof v === "string" && v.startsWith("#/components/")) out.add(v);
      else refsIn(v, out);
    }
  }
}

/** The document of one surface: its paths, the components they reach (transitively) and its credential. */
export function surfaceDocument(full: OpenApiDocument, surface: OpenApiSurface): OpenApiDocument {
  const s = SURFACES[surface];
  const paths = Object.fromEntries(Object.entries(full.paths ?? {}).filter(([p]) => p.startsWith(s.prefix)));
  const reached = new Set<string>();
  const pending: unknown[] = [paths];
  while (pending.length > 0) {
    const found = new Set<string>();
    refsIn(pending.pop(), found);
    for (const ref of found) {
      if (reached.has(ref)) continue;
      reached.add(ref);
      const [, , kind, name] = ref.split("/");
      pending.push(full.components?.[kind!]?.[name!]);
    }
  }
  const components: Record<string, Record<string, unknown>> = {};
  for (const [kind, entries] of Object.entries(full.components ?? {})) {
    for (const [name, value] of Object.entries(entries ?? {})) {
      if (reached.has(`#/components/${kind}/${name}`)) (components[kind] ??= {})[name] = value;
    }
  }
  components.securitySchemes = {
    bearerAuth: { type: "http", scheme: "bearer", description: s.credential },
    ...(s.cookie
      ? { cookieAuth: { type: "apiKey", in: "cookie", name: s.cookie.name, description: s.cookie.description } }
      : {}),
  };
  return {
    openapi: "3.1.0",
    info: { title: s.title, version: OPENAPI_VERSION, description: s.description },
    servers: [{ url: "/" }],
    security: s.cookie ? [{ bearerAuth: [] }, { cookieAuth: [] }] : [{ bearerAuth: [] }],
    paths,
    components,
  };
}

/** The committed file's text for a document: stable key order as generated, two-space indent, final newline. */
export const documentText = (doc: OpenApiDocument) => `${JSON.stringify(doc, null, 2)}\n`;
