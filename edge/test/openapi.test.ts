/// <reference types="vite/client" />
import { documentText, OPENAPI_SURFACES } from "@imagegen/contracts/openapi";
import { SAMPLER_NAMES, LORA_TARGET_KINDS } from "@imagegen/contracts/enums";
import { LORA_TARGET_KINDS as MANIFEST_LORA_TARGET_KINDS } from "@imagegen/formats/lora-keys";
import { SamplerName as ManifestSamplerName } from "@imagegen/formats/manifest";
import adminText from "@imagegen/contracts/openapi/admin.json?raw";
import publicText from "@imagegen/contracts/openapi/public.json?raw";
import runnerText from "@imagegen/contracts/openapi/runner.json?raw";
import { describe, expect, it } from "vitest";
import { createApp } from "../src/app.ts";
import { openApiDocuments } from "../src/openapi.ts";
import { call } from "./helpers.ts";

const committed = { public: publicText, admin: adminText, runner: runnerText };

describe("OpenAPI 3.1 documents", () => {
  it("serves the public one without auth, generated from the validating schemas", async () => {
    const r = await call("GET", "/v1/openapi.json");
    expect(r.status).toBe(200);
    const doc = r.body;
    expect(doc.openapi).toBe("3.1.0");
    for (const path of [
      "/v1/generations",
      "/v1/generations/{id}",
      "/v1/generations/{id}/cancel",
      "/v1/models",
      "/v1/keys",
    ]) {
      expect(Object.keys(doc.paths)).toContain(path);
    }
    const create = doc.components.schemas.CreateGeneration;
    // The same limits the validator enforces (see errors.test.ts).
    expect(create.properties.prompt.maxLength).toBe(1000);
    expect(create.additionalProperties).toBe(false);
    expect(create.required).toEqual(["prompt"]);
    expect(doc.paths["/v1/generations"].post.requestBody.content["application/json"].schema.$ref).toBe(
      "#/components/schemas/CreateGeneration",
    );
    expect(doc.paths["/v1/generations"].post.responses["429"]).toBeDefined();
    expect(doc.components.securitySchemes.bearerAuth.scheme).toBe("bearer");
  });

  it("keeps the runner and operator routes in documents of their own", () => {
    const docs = openApiDocuments(createApp());
    expect(Object.keys(docs.runner.paths!)).toContain("/internal/v1/lease");
    expect(Object.keys(docs.admin.paths!)).toContain("/admin/v1/tenants");
    for (const path of Object.keys(docs.public.paths!)) expect(path.startsWith("/v1/")).toBe(true);
    // Each document carries the schemas its paths reach, and only those.
    expect(docs.runner.components!.schemas).toHaveProperty("LeasedJob");
    expect(docs.public.components!.schemas).not.toHaveProperty("LeasedJob");
    expect(docs.admin.components!.schemas).toHaveProperty("Tenant");
  });

  it.each(OPENAPI_SURFACES)("the committed contracts/openapi/%s.json matches the code", (surface) => {
    const docs = openApiDocuments(createApp());
    expect(
      committed[surface],
      `contracts/openapi/${surface}.json is out of date: run \`npm run openapi\` and commit it`,
    ).toBe(documentText(docs[surface]));
  });
});

describe("enums shared with the bundle manifest", () => {
  // formats and contracts depend on nothing of ours, so each declares these lists; the edge uses both.
  it("name the same samplers and LoRA target kinds", () => {
    expect([...SAMPLER_NAMES]).toEqual(ManifestSamplerName.options);
    expect([...LORA_TARGET_KINDS]).toEqual([...MANIFEST_LORA_TARGET_KINDS]);
  });
});
