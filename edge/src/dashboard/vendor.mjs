/**
 * Copies the dashboard's third-party browser files from node_modules into public/vendor/ (git-ignored), so that the
 * edge serves them itself (no CDN). wrangler runs this as the Worker's custom build ([build] in wrangler.toml) before
 * `wrangler dev` and `wrangler deploy`; the versions are the ones edge/package.json pins.
 */
import { copyFileSync, mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const uplot = dirname(require.resolve("uplot/package.json"));
const out = join(here, "public", "vendor");
mkdirSync(out, { recursive: true });
for (const [from, to] of [
  ["dist/uPlot.esm.js", "uplot.js"],
  ["dist/uPlot.min.css", "uplot.css"],
])
  copyFileSync(join(uplot, from), join(out, to));
