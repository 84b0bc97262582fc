// Lets Node load the Worker's modules to read its routes: `cloudflare:*` exist only inside workerd, and nothing
// here runs a Durable Object, so empty classes stand in for them.
import { register } from "node:module";

const stub = "export class DurableObject {} export class WorkerEntrypoint {} export const env = {};";
register(
  `data:text/javascript,${encodeURIComponent(`
    export async function resolve(specifier, context, next) {
      if (specifier.startsWith("cloudflare:")) return { url: "data:text/javascript,${encodeURIComponent(stub)}", shortCircuit: true };
      return next(specifier, context);
    }`)}`,
);
