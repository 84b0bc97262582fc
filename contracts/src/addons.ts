/** Add-ons (LoRA files, ControlNet bundles): upload, finalize, versions, visibility. */
import { z } from "@hono/zod-openapi";
import { ADDON_KINDS, ADDON_VERSION_STATUSES, VISIBILITIES } from "./enums.ts";

export const AddonKind = z.enum(ADDON_KINDS);
export type AddonKind = z.infer<typeof AddonKind>;
export const Visibility = z.enum(VISIBILITIES);
export type Visibility = z.infer<typeof Visibility>;
export const AddonVersionStatus = z.enum(ADDON_VERSION_STATUSES);
export type AddonVersionStatus = z.infer<typeof AddonVersionStatus>;
/** Names are unique per tenant and safe in storage keys. */
export const AddonName = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[A-Za-z0-9._-]+$/);
export const Sha256 = z.string().regex(/^[0-9a-f]{64}$/);

export const ADDON_SIZE_LIMITS = { lora: 64 * 1024 * 1024, controlnet: 512 * 1024 * 1024 } as const satisfies Record<
  AddonKind,
  number
>;

/** What validation found (rank, targets, residual names...). */
export const AddonDetails = z.record(z.string(), z.unknown());
export type AddonDetails = z.infer<typeof AddonDetails>;

export const Addon = z
  .object({
    id: z.string(),
    object: z.literal("addon"),
    kind: AddonKind,
    name: z.string(),
    family: z.string(),
    visibility: Visibility,
    latest_version: z.number().int(),
    owned: z.boolean(),
    created_at: z.string(),
  })
  .openapi("Addon");

export const CreateAddonBody = z
  .object({
    kind: AddonKind,
    /** A new name creates an add-on; an existing one of this tenant's adds a version (older versions stay usable as id@version). */
    name: AddonName,
    family: z.string().min(1).max(64).openapi({ example: "tiny-shapes" }),
    visibility: Visibility.default("private"),
    size_bytes: z.number().int().positive(),
    sha256: Sha256,
  })
  .strict()
  .openapi("CreateAddon");

export const AddonVersion = z
  .object({
    version: z.number().int(),
    status: AddonVersionStatus,
    rejection_reason: z.string().nullable(),
    size_bytes: z.number().int().nullable(),
    sha256: z.string().nullable(),
    details: AddonDetails.nullable(),
    created_at: z.string(),
  })
  .openapi("AddonVersion");

export const AddonUpload = z
  .object({
    addon: Addon,
    version: AddonVersion,
    upload: z.object({
      method: z.literal("PUT"),
      url: z.string(),
      headers: z.record(z.string(), z.string()),
      expires_at: z.string(),
    }),
  })
  .openapi("AddonUpload");

export const UpdateAddonBody = z.object({ visibility: Visibility }).strict().openapi("UpdateAddon");
