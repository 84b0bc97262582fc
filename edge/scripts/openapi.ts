/**
 * Writes the public, admin and runner OpenAPI documents to contracts/openapi/ (committed); `--check` only compares
 * and fails when a committed file is out of date. Run it from the root with `npm run openapi`.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { documentText, OPENAPI_SURFACES } from "@imagegen/contracts/openapi";
import { createApp } from "../src/app.ts";
import { openApiDocuments } from "../src/openapi.ts";

const check = process.argv.includes("--check");
const docs = openApiDocuments(createApp());
let stale = 0;
for (const surface of OPENAPI_SURFACES) {
  const path = new URL(`../../contracts/openapi/${surface}.json`, import.meta.url);
  const text = documentText(docs[surface]);
  let committed = "";
  try {
    committed = readFileSync(path, "utf8");
  } catch {}
  if (committed === text) continue;
  if (check) {
    stale++;
    console.error(`contracts/openapi/${surface}.json is out of date`);
  } else {
    writeFileSync(path, text);
    console.log(`wrote contracts/openapi/${surface}.json`);
  }
}
if (stale > 0) {
  console.error("run `npm run openapi` and commit the result");
  process.exit(1);
}
