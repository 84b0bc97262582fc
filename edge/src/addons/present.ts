/** Add-ons and their versions as the API shows them. */
import type { z } from "@hono/zod-openapi";
import { Addon, AddonVersion, iso } from "@imagegen/contracts";
import type { addonsTable } from "@imagegen/db";

export function presentAddon(a: addonsTable.Addon, tenantId: string): z.infer<typeof Addon> {
  return {
    id: a.id,
    object: "addon",
    kind: a.kind,
    name: a.name,
    family: a.family,
    visibility: a.visibility,
    latest_version: a.latestVersion,
    owned: a.tenantId === tenantId,
    created_at: iso(a.createdAt)!,
  };
}

export function presentVersion(v: addonsTable.AddonVersion): z.infer<typeof AddonVersion> {
  return {
    version: v.version,
    status: v.status,
    rejection_reason: v.rejectionReason,
    size_bytes: v.sizeBytes,
    sha256: v.sha256,
    details: v.details ?? null,
    created_at: iso(v.createdAt)!,
  };
}
