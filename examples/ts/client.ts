/**
 * The client every example uses: the edge URL and API key from IMAGEGEN_BASE_URL and IMAGEGEN_API_KEY, else from
 * the `.state/stack.json` that `npm start` writes (STATE_DIR moves it).
 */
import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { ImageGen } from "@imagegen/sdk";

const root = resolve(import.meta.dirname, "../..");
const statePath = join(resolve(root, process.env.STATE_DIR ?? ".state"), "stack.json");
const state = existsSync(statePath) ? JSON.parse(readFileSync(statePath, "utf8")) : {};

export const client = new ImageGen({
  baseURL: process.env.IMAGEGEN_BASE_URL ?? state.edge_url,
  apiKey: process.env.IMAGEGEN_API_KEY ?? state.demo_api_key,
});

/** The model the examples draw with: IMAGEGEN_MODEL, else the stack's default, else the first listed. */
export async function model() {
  const id = process.env.IMAGEGEN_MODEL ?? state.default_model ?? (await client.models.list()).data[0]?.id;
  return client.models.get(id);
}

export const repoRoot = root;
