import { and, desc, eq, isNull, or, sql } from "drizzle-orm";
import type { Db } from "../index.ts";
import { addons, addonVersions } from "../schema.ts";

export type Addon = typeof addons.$inferSelect;
export type AddonVersion = typeof addonVersions.$inferSelect;
export type NewAddon = typeof addons.$inferInsert;
export type NewAddonVersion = typeof addonVersions.$inferInsert;

/** An add-on a tenant may see: its own (private or tenant-wide) or anyone's public one, never a deleted one. */
const visibleTo = (tenantId: string) =>
  and(isNull(addons.deletedAt), or(eq(addons.tenantId, tenantId), eq(addons.visibility, "public")));

export async function insertAddonWithVersion(db: Db, addon: NewAddon, version: NewAddonVersion) {
  const [a, v] = await db.batch([
    db.insert(addons).values(addon).returning(),
    db.insert(addonVersions).values(version).returning(),
  ]);
  return { addon: a[0]!, version: v[0]! };
}

export async function getVisibleAddon(db: Db, tenantId: string, id: string): Promise<Addon | undefined> {
  return db.query.addons.findFirst({ where: and(eq(addons.id, id), visibleTo(tenantId)) });
}

export async function listVisibleAddons(db: Db, tenantId: string, limit = 100): Promise<Addon[]> {
  return db.select().from(addons).where(visibleTo(tenantId)).orderBy(desc(addons.id)).limit(limit);
}

export interface ResolvedAddon {
  addon: Addon;
  version: AddonVersion;
}

/**
 * Resolves `id` or `id@version` references to the versions a job will use: the latest ready version when none
 * is named. A reference the tenant may not see resolves to nothing, exactly like one that does not exist.
 */
export async function resolveVisibleVersion(
  db: Db,
  tenantId: string,
  id: string,
  version: number | undefined,
): Promise<ResolvedAddon | undefined> {
  const [row] = await db
    .select({ addon: addons, version: addonVersions })
    .from(addons)
    .innerJoin(addonVersions, eq(addonVersions.addonId, addons.id))
    .where(
      and(
        eq(addons.id, id),
        visibleTo(tenantId),
        version === undefined
          ? eq(
              addonVersions.version,
              sql`(SELECT max(v.version) FROM addon_versions v WHERE v.addon_id = ${addons.id} AND v.status = 'ready')`,
            )
          : eq(addonVersions.version, version),
      ),
    )
    .limit(1);
  return row;
}

/** The stored versions behind a job's "id@version" refs (whoever owns them: the job was authorised at create). */
export async function versionsForRefs(db: Db, refs: string[]): Promise<ResolvedAddon[]> {
  if (refs.length === 0) return [];
  const rows = await db
    .select({ addon: addons, version: addonVersions })
    .from(addons)
    .innerJoin(addonVersions, eq(addonVersions.addonId, addons.id))
    .where(
      and(
        isNull(addons.deletedAt),
        or(...refs.map((r) => {
          const [id, v] = r.split("@");
          return and(eq(addons.id, id!), eq(addonVersions.version, Number(v)));
        })),
      ),
    );
  return rows;
}

/** Soft-deletes an add-on its tenant owns; queued jobs that use it fail at lease with a clear error. */
export async function deleteOwnedAddon(db: Db, tenantId: string, id: string, now: number): Promise<Addon | undefined> {
  const [row] = await db
    .update(addons)
    .set({ deletedAt: now, updatedAt: now })
    .where(and(eq(addons.id, id), eq(addons.tenantId, tenantId), isNull(addons.deletedAt)))
    .returning();
  return row;
}
