/**
 * The OpenAPI documents come from the routes' own `createRoute` definitions and the contracts' schemas (the ones
 * that validate): one document for the whole app, cut into the public, admin and runner documents by the contracts.
 */
import {
  OPENAPI_BASE,
  OPENAPI_SURFACES,
  surfaceDocument,
  type OpenApiDocument,
  type OpenApiSurface,
} from "@imagegen/contracts/openapi";
import type { OpenAPIHono } from "@hono/zod-openapi";

// Any OpenAPIHono: the documents depend on the routes registered, not on the app's bindings.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyApp = OpenAPIHono<any, any, any>;

export function openApiDocuments(app: AnyApp): Record<OpenApiSurface, OpenApiDocument> {
  const full = app.getOpenAPI31Document(OPENAPI_BASE) as OpenApiDocument;
  return Object.fromEntries(OPENAPI_SURFACES.map((s) => [s, surfaceDocument(full, s)])) as Record<
    OpenApiSurface,
    OpenApiDocument
  >;
}
