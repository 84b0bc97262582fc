/**
 * The API's types, inferred from the same zod schemas the edge validates with and builds its OpenAPI document from
 * (edge/src/schemas). Type-only imports: the SDK carries no runtime dependency.
 */
import type { z } from "zod";
import type * as Admin from "../../edge/src/schemas/admin.ts";
import type * as Gen from "../../edge/src/schemas/generations.ts";
import type * as Models from "../../edge/src/schemas/models.ts";

export type CreateGenerationParams = z.input<typeof Gen.CreateGenerationBody>;
export type Generation = z.infer<typeof Gen.Generation>;
export type GenerationStatus = z.infer<typeof Gen.JobStatus>;
export type GenerationList = z.infer<typeof Gen.GenerationList>;
export type ListGenerationsParams = Partial<z.output<typeof Gen.ListGenerationsQuery>>;
export type SignedImageUrl = z.infer<typeof Gen.SignedImageUrl>;
export type Model = z.infer<typeof Models.Model>;
export type Addon = z.infer<typeof Admin.Addon>;
export type AddonVersion = z.infer<typeof Admin.AddonVersion>;
export type AddonUpload = z.infer<typeof Admin.AddonUpload>;
export type CreateAddonParams = z.input<typeof Admin.CreateAddonBody>;
export type ApiKey = z.infer<typeof Admin.ApiKey>;
export type CreatedApiKey = z.infer<typeof Admin.CreatedApiKey>;
export type CreateKeyParams = z.input<typeof Admin.CreateKeyBody>;
export type ErrorBody = { error: { type: string; code: string; message: string; param?: string; request_id: string } };
export type List<T> = { object: "list"; data: T[] };
