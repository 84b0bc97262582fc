/// <reference types="node" />
/**
 * The committed OpenAPI documents, as a client's tooling sees them: two independent validators
 * (@apidevtools/swagger-parser and `redocly lint` with its recommended rules, contracts/redocly.yaml) find no
 * error and no warning, every operation has an operationId, the public document holds only public paths, and the
 * types openapi-typescript generates from it (its defaults) compile under `tsc --strict`.
 * Runs in Node (these tools need it), not in workerd with the edge's tests.
 */
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import SwaggerParser from "@apidevtools/swagger-parser";
import { afterAll, describe, expect, it } from "vitest";
import { OPENAPI_SURFACES, type OpenApiDocument } from "./openapi.ts";

const run = promisify(execFile);
const contractsDir = fileURLToPath(new URL("..", import.meta.url));
const bin = (name: string) => fileURLToPath(new URL(`../../node_modules/.bin/${name}`, import.meta.url));
const documentPath = (surface: string) => join(contractsDir, "openapi", `${surface}.json`);
const load = (surface: string): OpenApiDocument => JSON.parse(readFileSync(documentPath(surface), "utf8"));

const METHODS = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
function operations(doc: OpenApiDocument): Array<{ where: string; operationId?: string }> {
  return Object.entries(doc.paths ?? {}).flatMap(([path, item]) =>
    Object.entries(item as Record<string, { operationId?: string }>)
      .filter(([method]) => METHODS.includes(method))
      .map(([method, op]) => ({ where: `${method.toUpperCase()} ${path}`, operationId: op.operationId })),
  );
}

const scratch = mkdtempSync(join(tmpdir(), "openapi-validate-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

describe.each(OPENAPI_SURFACES)("contracts/openapi/%s.json", (surface) => {
  it("validates under swagger-parser", async () => {
    // validate() dereferences in place: give it a copy.
    await expect(SwaggerParser.validate(load(surface) as never)).resolves.toBeDefined();
  });

  it("passes redocly lint (recommended rules) with no error and no warning", async () => {
    const { stdout } = await run(
      bin("redocly"),
      ["lint", "--config", join(contractsDir, "redocly.yaml"), "--format", "json", documentPath(surface)],
      {
        env: { ...process.env, REDOCLY_TELEMETRY: "off", REDOCLY_SUPPRESS_UPDATE_NOTICE: "true" },
        maxBuffer: 16 * 1024 * 1024,
      },
    ).catch((err: { stdout?: string }) => ({ stdout: err.stdout ?? "" }));
    const report = JSON.parse(stdout) as {
      totals: { errors: number; warnings: number };
      problems: Array<{ ruleId: string; message: string }>;
    };
    const problems = report.problems.map((p) => `${p.ruleId}: ${p.message}`);
    expect(problems).toEqual([]);
    expect(report.totals).toMatchObject({ errors: 0, warnings: 0 });
  }, 60_000);

  it("names every operation, uniquely", () => {
    const ops = operations(load(surface));
    expect(ops.length).toBeGreaterThan(0);
    expect(ops.filter((o) => !o.operationId).map((o) => o.where)).toEqual([]);
    const ids = ops.map((o) => o.operationId);
    expect(new Set(ids).size).toBe(ids.length);
  });
});

describe("the public document", () => {
  it("lists no admin or runner path", () => {
    const paths = Object.keys(load("public").paths ?? {});
    expect(paths.length).toBeGreaterThan(10);
    expect(
      paths.filter(
        (p) =>
          !p.startsWith("/v1/") || /^\/(admin|internal)\b/.test(p) || p.includes("/admin/") || p.includes("/internal/"),
      ),
    ).toEqual([]);
    const text = readFileSync(documentPath("public"), "utf8");
    expect(text).not.toMatch(/"\/(admin|internal)\/v1\//);
  });

  it("gives openapi-typescript types that compile under tsc --strict", async () => {
    const types = join(scratch, "public.ts");
    await run(bin("openapi-typescript"), [documentPath("public"), "--output", types]);
    // Use the generated types, so an empty or broken file cannot pass.
    const use = join(scratch, "use.ts");
    writeFileSync(
      use,
      [
        'import type { components, operations, paths } from "./public.ts";',
        'type Body = paths["/v1/images/generations"]["post"]["requestBody"]["content"]["application/json"];',
        // Its defaults (defaultNonNullable) make a field with a default required in the generated type.
        'export const body: Body = { prompt: "a red circle", size: "64x64", n: 1, response_format: "url" };',
        'export type Gen = components["schemas"]["Generation"]["status"];',
        'export type Op = operations["createGeneration"];',
      ].join("\n"),
    );
    const tsc = await run(bin("tsc"), [
      "--noEmit",
      "--strict",
      "--allowImportingTsExtensions",
      "--module",
      "esnext",
      "--moduleResolution",
      "bundler",
      "--target",
      "es2022",
      types,
      use,
    ]).catch((err: { stdout?: string }) => ({ stdout: `tsc failed:\n${err.stdout ?? ""}` }));
    expect(tsc.stdout).toBe("");
  }, 120_000);
});
