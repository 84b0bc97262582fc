/**
 * The API's types, inferred from the same zod schemas the edge validates with and builds its OpenAPI documents from
 * (`@imagegen/contracts`). Type-only imports: the SDK carries no runtime dependency.
 */
import type { z } from "zod";
import type * as Addons from "@imagegen/contracts/addons";
import type { ErrorBody as ContractErrorBody } from "@imagegen/contracts/errors";
import type * as Gen from "@imagegen/contracts/generations";
import type * as Keys from "@imagegen/contracts/keys";
import type * as Models from "@imagegen/contracts/models";
import type * as Webhooks from "@imagegen/contracts/webhooks";

export type CreateGenerationParams = z.input<typeof Gen.CreateGenerationBody>;
export type Generation = z.infer<typeof Gen.Generation>;
export type GenerationStatus = z.infer<typeof Gen.JobStatus>;
export type GenerationList = z.infer<typeof Gen.GenerationList>;
export type ListGenerationsParams = Partial<z.output<typeof Gen.ListGenerationsQuery>>;
export type SignedImageUrl = z.infer<typeof Gen.SignedImageUrl>;
export type Model = z.infer<typeof Models.Model>;
export type Addon = z.infer<typeof Addons.Addon>;
export type AddonVersion = z.infer<typeof Addons.AddonVersion>;
export type AddonUpload = z.infer<typeof Addons.AddonUpload>;
export type CreateAddonParams = z.input<typeof Addons.CreateAddonBody>;
export type ApiKey = z.infer<typeof Keys.ApiKey>;
export type CreatedApiKey = z.infer<typeof Keys.CreatedApiKey>;
export type CreateKeyParams = z.input<typeof Keys.CreateKeyBody>;
/** The server's error body; `type` stays open: the SDK adds its own (`storage_error`) and a newer server may add more. */
export type ErrorBody = {
  error: Omit<ContractErrorBody["error"], "type"> & { type: ContractErrorBody["error"]["type"] | (string & {}) };
};
export type List<T> = { object: "list"; data: T[] };
export type WebhookSecret = z.infer<typeof Webhooks.WebhookSecret>;
export type WebhookDelivery = z.infer<typeof Webhooks.WebhookDelivery>;
