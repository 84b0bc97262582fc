/**
 * The imagegen SDK.
 *
 * @example
 * const client = new ImageGen({ apiKey: process.env.IMAGEGEN_API_KEY, baseURL: "http://127.0.0.1:8787" });
 * const g = await client.generations.createAndWait({ prompt: "a large red circle on the left, blue background", sampler: "lcm", steps: 4 });
 * console.log(g.images[0].url, g._request_id);
 */
import { Core, type ClientOptions } from "./core.ts";
import { Addons } from "./resources/addons.ts";
import { Generations } from "./resources/generations.ts";
import { Keys, Models } from "./resources/models-and-keys.ts";
import { Webhooks } from "./webhooks.ts";

export class ImageGen {
  readonly generations: Generations;
  readonly addons: Addons;
  readonly models: Models;
  readonly keys: Keys;
  readonly webhooks: Webhooks;

  constructor(options: ClientOptions = {}) {
    const core = new Core(options);
    this.generations = new Generations(core);
    this.addons = new Addons(core);
    this.models = new Models(core);
    this.keys = new Keys(core);
    this.webhooks = new Webhooks(core);
  }
}

export * from "./errors.ts";
export type { ClientOptions, RequestOptions, WithRequestId } from "./core.ts";
export { PagePromise, type Page } from "./pagination.ts";
export type { UploadOptions, UploadProgress } from "./resources/addons.ts";
export type { GenerationEvent } from "./resources/generations.ts";
export type { ServerSentEvent } from "./streaming.ts";
export { signWebhook, verifyWebhook, WEBHOOK_TOLERANCE_SECONDS, type WebhookHeaders } from "./webhooks.ts";
export type * from "./types.ts";
