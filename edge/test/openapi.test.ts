import { describe, expect, it } from "vitest";
import { call } from "./helpers.ts";

describe("OpenAPI 3.1 document", () => {
  it("is served without auth and generated from the validating schemas", async () => {
    const r = await call("GET", "/v1/openapi.json");
    expect(r.status).toBe(200);
    const doc = r.body;
    expect(doc.openapi).toBe("3.1.0");
    for (const path of ["/v1/generations", "/v1/generations/{id}", "/v1/generations/{id}/cancel", "/v1/models", "/v1/keys", "/internal/v1/lease", "/admin/v1/tenants"]) {
      expect(Object.keys(doc.paths)).toContain(path);
    }
    const create = doc.components.schemas.CreateGeneration;
    // The same limits the validator enforces (see errors.test.ts).
    expect(create.properties.prompt.maxLength).toBe(1000);
    expect(create.additionalProperties).toBe(false);
    expect(create.required).toEqual(["prompt"]);
    expect(doc.paths["/v1/generations"].post.requestBody.content["application/json"].schema.$ref).toBe("#/components/schemas/CreateGeneration");
    expect(doc.paths["/v1/generations"].post.responses["429"]).toBeDefined();
    expect(doc.components.securitySchemes.bearerAuth.scheme).toBe("bearer");
  });
});
