import type { Core, RequestOptions } from "../core.ts";
import type { ApiKey, CreatedApiKey, CreateKeyParams, List, Model } from "../types.ts";

export class Models {
  private readonly core: Core;
  constructor(core: Core) {
    this.core = core;
  }
  async list(opts: RequestOptions = {}): Promise<List<Model>> {
    return (await this.core.request<List<Model>>("GET", "/v1/models", opts)).data;
  }
  async get(id: string, opts: RequestOptions = {}): Promise<Model> {
    return (await this.core.request<Model>("GET", `/v1/models/${encodeURIComponent(id)}`, opts)).data;
  }
}

export class Keys {
  private readonly core: Core;
  constructor(core: Core) {
    this.core = core;
  }
  async list(opts: RequestOptions = {}): Promise<List<ApiKey>> {
    return (await this.core.request<List<ApiKey>>("GET", "/v1/keys", opts)).data;
  }
  /** The answer carries `secret`, shown this once. */
  async create(params: CreateKeyParams = {}, opts: RequestOptions = {}): Promise<CreatedApiKey> {
    return (await this.core.request<CreatedApiKey>("POST", "/v1/keys", { ...opts, body: params })).data;
  }
  async revoke(id: string, opts: RequestOptions = {}): Promise<ApiKey> {
    return (await this.core.request<ApiKey>("DELETE", `/v1/keys/${encodeURIComponent(id)}`, opts)).data;
  }
}
