import type { Core, RequestOptions, WithRequestId } from "../core.ts";
import { PagePromise } from "../pagination.ts";
import type { ApiKey, CreatedApiKey, CreateKeyParams, List, Model } from "../types.ts";

export class Models {
  private readonly core: Core;
  constructor(core: Core) {
    this.core = core;
  }
  list(opts: RequestOptions = {}): PagePromise<List<Model>> {
    return new PagePromise(async () => (await this.core.request<List<Model>>("GET", "/v1/models", opts)).data);
  }
  async get(id: string, opts: RequestOptions = {}): Promise<WithRequestId<Model>> {
    return (await this.core.request<Model>("GET", `/v1/models/${encodeURIComponent(id)}`, opts)).data;
  }
}

export class Keys {
  private readonly core: Core;
  constructor(core: Core) {
    this.core = core;
  }
  list(opts: RequestOptions = {}): PagePromise<List<ApiKey>> {
    return new PagePromise(async () => (await this.core.request<List<ApiKey>>("GET", "/v1/keys", opts)).data);
  }
  /** The answer carries `secret`, shown this once. */
  async create(params: CreateKeyParams = {}, opts: RequestOptions = {}): Promise<WithRequestId<CreatedApiKey>> {
    return (await this.core.request<CreatedApiKey>("POST", "/v1/keys", { ...opts, body: params })).data;
  }
  async revoke(id: string, opts: RequestOptions = {}): Promise<WithRequestId<ApiKey>> {
    return (await this.core.request<ApiKey>("DELETE", `/v1/keys/${encodeURIComponent(id)}`, opts)).data;
  }
}
