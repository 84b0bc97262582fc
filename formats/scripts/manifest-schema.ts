// Writes formats/manifest.schema.json from the zod manifest (the one declaration of the bundle contract).
import { writeFileSync } from "node:fs";
import { bundleManifestJsonSchema } from "../src/manifest.ts";

const out = new URL("../manifest.schema.json", import.meta.url);
writeFileSync(out, JSON.stringify(bundleManifestJsonSchema(), null, 2) + "\n");
console.log(`wrote ${out.pathname}`);
