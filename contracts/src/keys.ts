/** API keys: random, shown once at create, stored hashed. */
import { z } from "@hono/zod-openapi";
import { SCOPES } from "./enums.ts";

export const Scope = z.enum(SCOPES);
export type Scope = z.infer<typeof Scope>;

export const CreateKeyBody = z
  .object({
    name: z.string().min(1).max(128).default("default"),
    scopes: z
      .array(Scope)
      .min(1)
      .default([...SCOPES]),
    expires_in_days: z.number().int().min(1).max(3650).optional(),
  })
  .strict()
  .openapi("CreateKey");

export const ApiKey = z
  .object({
    id: z.string(),
    object: z.literal("api_key"),
    tenant_id: z.string(),
    name: z.string(),
    prefix: z.string(),
    scopes: z.array(z.string()),
    created_at: z.string(),
    last_used_at: z.string().nullable(),
    expires_at: z.string().nullable(),
    revoked_at: z.string().nullable(),
  })
  .openapi("ApiKey");

/** Only the answer to a create carries the secret: it is stored hashed and never shown again. */
export const CreatedApiKey = ApiKey.extend({ secret: z.string() }).openapi("CreatedApiKey");
export const ApiKeyList = z.object({ object: z.literal("list"), data: z.array(ApiKey) }).openapi("ApiKeyList");
