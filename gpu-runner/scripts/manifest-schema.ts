// Writes gpu-runner/manifest.schema.json from the zod manifest (the one declaration of the bundle contract).
import { writeFileSync } from "node:fs";
import { z } from "zod";
import { BundleManifest } from "../src/pipeline/manifest.ts";

const schema = z.toJSONSchema(BundleManifest, { target: "draft-2020-12" });
const out = new URL("../manifest.schema.json", import.meta.url);
writeFileSync(out, JSON.stringify({ title: "imagegen model bundle manifest", ...schema }, null, 2) + "\n");
console.log(`wrote ${out.pathname}`);
