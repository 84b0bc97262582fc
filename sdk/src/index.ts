/**
 * The imagegen SDK.
 *
 * @example
 * const client = new ImageGen({ apiKey: process.env.IMAGEGEN_API_KEY, baseURL: "http://127.0.0.1:8787" });
 * const g = await client.generations.createAndWait({ prompt: "a large red circle on the left, blue background", sampler: "lcm", steps: 4 });
 * console.log(g.images[0].url);
 */
import { Core, type ClientOptions } from "./core.ts";
import { Addons } from "./resources/addons.ts";
import { Generations } from "./resources/generations.ts";
import { Keys, Models } from "./resources/models-and-keys.ts";

export class ImageGen {
  readonly generations: Generations;
  readonly addons: Addons;
  readonly models: Models;
  readonly keys: Keys;

  constructor(options: ClientOptions = {}) {
    const core = new Core(options);
    this.generations = new Generations(core);
    this.addons = new Addons(core);
    this.models = new Models(core);
    this.keys = new Keys(core);
  }
}

export * from "./errors.ts";
export type { ClientOptions, RequestOptions } from "./core.ts";
export type * from "./types.ts";
